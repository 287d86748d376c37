"""Tests for admin_api.settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN
from pydantic import ValidationError

from admin_api.errors import ConfigurationError
from admin_api.settings import Settings, load_settings


def test_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSORTIA_EVENT_TOKEN", EVENT_TOKEN)
    settings = load_settings()
    assert settings.database_url == "sqlite:///./consortia-admin.sqlite"
    assert settings.reconcile_interval_s == 5
    assert settings.host == "127.0.0.1"
    assert settings.api_token is None
    assert settings.flare_admin_kit is None


def test_event_token_required() -> None:
    with pytest.raises(ConfigurationError, match="CONSORTIA_EVENT_TOKEN"):
        load_settings()


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("", "needs at least 32"),
        ("short-token-123", "needs at least 32"),
        ("changeme-changeme-changeme-changeme-1234", "placeholder text 'changeme'"),
        ("REPLACE-ME-with-a-real-token-0123456789", "placeholder text 'replace-me'"),
        ("a" * 40, "distinct characters"),
        ("abcdefghijklmnop qrstuvwxyz0123456789AB", "whitespace"),
    ],
)
def test_event_token_rejected(monkeypatch: pytest.MonkeyPatch, token: str, fragment: str) -> None:
    monkeypatch.setenv("CONSORTIA_EVENT_TOKEN", token)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()
    assert fragment in str(excinfo.value)
    assert "secrets.token_urlsafe" in str(excinfo.value)


def test_rejected_token_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "changeme-" + "Xy7Pq2Lm9Zr4" * 3
    monkeypatch.setenv("CONSORTIA_EVENT_TOKEN", token)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()
    assert token not in str(excinfo.value)
    assert excinfo.value.__cause__ is None


def test_api_token_must_differ() -> None:
    with pytest.raises(ValidationError, match="equals CONSORTIA_EVENT_TOKEN"):
        Settings(event_token=EVENT_TOKEN, api_token=EVENT_TOKEN)  # type: ignore[arg-type]


def test_empty_api_token_disables_reads() -> None:
    settings = Settings(event_token=EVENT_TOKEN, api_token="")  # type: ignore[arg-type]
    assert settings.api_token is None


def test_tokens_hidden_in_repr() -> None:
    settings = Settings(event_token=EVENT_TOKEN, api_token=API_TOKEN)  # type: ignore[arg-type]
    assert EVENT_TOKEN not in repr(settings)
    assert API_TOKEN not in repr(settings)


def test_unsupported_database_scheme() -> None:
    with pytest.raises(ValidationError, match="'mysql' is not supported"):
        Settings(event_token=EVENT_TOKEN, database_url="mysql://root@localhost/x")  # type: ignore[arg-type]


def test_admin_kit_needs_user(tmp_path: Path) -> None:
    (tmp_path / "startup").mkdir()
    (tmp_path / "startup" / "fed_admin.json").write_text("{}")
    with pytest.raises(ValidationError, match="CONSORTIA_FLARE_ADMIN_USER is missing"):
        Settings(event_token=EVENT_TOKEN, flare_admin_kit=tmp_path)  # type: ignore[arg-type]


def test_admin_kit_needs_fed_admin(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="has no startup/fed_admin.json"):
        Settings(event_token=EVENT_TOKEN, flare_admin_kit=tmp_path, flare_admin_user="admin@hq.org")  # type: ignore[arg-type]


def test_interval_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSORTIA_EVENT_TOKEN", EVENT_TOKEN)
    monkeypatch.setenv("CONSORTIA_RECONCILE_INTERVAL_S", "0")
    with pytest.raises(ConfigurationError, match="CONSORTIA_RECONCILE_INTERVAL_S"):
        load_settings()
