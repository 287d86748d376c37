"""Exit codes and messages of the kit lifecycle commands on a provisioned workspace (no federation running)."""

from __future__ import annotations

from typer.testing import CliRunner

from consortia.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_kit_list_ok(workspace):
    result = invoke("kit", "list", "-w", str(workspace.root))
    assert result.exit_code == 0, result.output
    assert "hospital-a" in result.output


def test_kit_list_warns(workspace):
    result = invoke("kit", "list", "-w", str(workspace.root), "--warn-days", "400")
    assert result.exit_code == 1
    assert "expire within 400 days" in result.output


def test_site_add_and_revoke(workspace):
    added = invoke("site", "add", "hospital-d", "--org", "hospital_d", "-w", str(workspace.root))
    assert added.exit_code == 0, added.output
    assert "existing certificates unchanged" in added.output
    revoked = invoke("site", "revoke", "hospital-d", "--reason", "test", "-w", str(workspace.root))
    assert revoked.exit_code == 0, revoked.output
    assert "Revoked site 'hospital-d'" in revoked.output
    assert "the server rejects it when it starts" in revoked.output


def test_site_add_bad_org(workspace):
    result = invoke("site", "add", "hospital-d", "--org", "bad-org", "-w", str(workspace.root))
    assert result.exit_code == 1
    assert "invalid site org 'bad-org'" in result.output


def test_site_revoke_unknown(workspace):
    result = invoke("site", "revoke", "hospital-z", "-w", str(workspace.root))
    assert result.exit_code == 1
    assert "unknown site 'hospital-z'" in result.output


def test_site_start_not_running(workspace):
    result = invoke("site", "start", "hospital-a", "-w", str(workspace.root))
    assert result.exit_code == 1
    assert "is not running: start it with 'consortia up'" in result.output


def test_site_rotate(workspace):
    result = invoke("site", "rotate", "hospital-a", "-w", str(workspace.root))
    assert result.exit_code == 0, result.output
    assert "recorded as revoked" in result.output
    assert "the server rejects the old certificate at registration" in result.output
