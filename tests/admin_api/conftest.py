"""Fixtures for the admin service tests: each database test runs on SQLite and on PostgreSQL.

SQLite databases are files under ``tmp_path``. PostgreSQL tests use the server at 127.0.0.1:5432 (override with
``CONSORTIA_TEST_POSTGRES_URL``) and only schemas named ``t_<run>_<n>`` that this run creates, reached through
``search_path``. ``database_url`` gives a migrated schema shared by the run and emptied before each test, because
migrating a fresh schema per test would dominate the run time. ``empty_database_url`` gives a fresh, unmigrated schema.
Every schema this run created is dropped at the end. PostgreSQL tests are skipped, with the reason, only when no
server answers.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN, EventFactory
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from admin_api.app import create_app
from admin_api.db import Database, upgrade
from admin_api.models import Base
from admin_api.settings import Settings

POSTGRES_URL = os.environ.get("CONSORTIA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass
class PostgresSchemas:
    """Creates one schema per test in the test database and drops them all at the end of the run."""

    base_url: str
    unavailable_reason: str | None = None
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    created: list[str] = field(default_factory=list)

    def _conninfo(self) -> str:
        return make_url(self.base_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def check(self) -> None:
        try:
            with psycopg.connect(self._conninfo(), connect_timeout=3) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            self.unavailable_reason = f"no PostgreSQL server answers at {self.base_url}: {exc}".strip()

    shared_schema: str | None = None

    def _url(self, schema: str) -> str:
        return f"{self.base_url}?options=-csearch_path%3D{schema}"

    def create(self) -> str:
        schema = f"t_{self.run_id}_{len(self.created)}"
        with psycopg.connect(self._conninfo(), autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        self.created.append(schema)
        return self._url(schema)

    def clean_shared(self) -> str:
        """Return the URL of the shared migrated schema after emptying every table and re-enabling its triggers."""
        if self.shared_schema is None:
            upgrade(self.create())
            self.shared_schema = self.created[-1]
        schema = self.shared_schema
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        with psycopg.connect(self._conninfo(), autocommit=True) as connection:
            connection.execute(f"SET search_path = {schema}")
            connection.execute("ALTER TABLE audit_events ENABLE TRIGGER USER")
            # replica mode skips the append-only triggers, so the test's audit rows can be removed.
            connection.execute("SET session_replication_role = replica")
            connection.execute(f"TRUNCATE {tables} RESTART IDENTITY")
        return self._url(schema)

    def drop_all(self) -> None:
        if not self.created:
            return
        with psycopg.connect(self._conninfo(), autocommit=True) as connection:
            for schema in self.created:
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="session")
def postgres_schemas() -> Iterator[PostgresSchemas]:
    schemas = PostgresSchemas(base_url=POSTGRES_URL)
    schemas.check()
    yield schemas
    schemas.drop_all()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's CONSORTIA_* variables out of the settings under test."""
    for name in list(os.environ):
        if name.startswith("CONSORTIA_") and name != "CONSORTIA_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_schemas: PostgresSchemas) -> str:
    """URL of an empty, migrated database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/admin.sqlite"
        upgrade(url)
        return url
    if postgres_schemas.unavailable_reason is not None:
        pytest.skip(postgres_schemas.unavailable_reason)
    return postgres_schemas.clean_shared()


@pytest.fixture(params=DATABASES)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Any, postgres_schemas: PostgresSchemas) -> str:
    """URL of a database without any table."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/empty.sqlite"
    if postgres_schemas.unavailable_reason is not None:
        pytest.skip(postgres_schemas.unavailable_reason)
    return postgres_schemas.create()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, event_token=EVENT_TOKEN, api_token=API_TOKEN)  # type: ignore[arg-type]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def event_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {EVENT_TOKEN}"}


@pytest.fixture
def read_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


_DEFAULT_PAYLOADS: dict[str, dict[str, Any]] = {
    "job.submitted": {"name": "fedavg", "submitter": "lead@hospital-a.org", "submitter_org": "hospital_a",
                      "submitter_role": "lead"},
    "job.started": {"sites": ["hospital-a", "hospital-b"], "num_rounds": 3},
    "round.started": {"num_rounds": 3, "sites": ["hospital-a", "hospital-b"]},
    "contribution.accepted": {"num_examples": 152, "metrics": {"loss": 0.41, "accuracy": 0.88}},
    "contribution.rejected": {"reason_code": "non_finite", "reason": "update of layer fc.weight contains NaN"},
    "round.completed": {"num_accepted": 2, "num_rejected": 0,
                        "global_metrics": {"loss": 0.35, "roc_auc": 0.93, "accuracy": 0.9}, "site_metrics": {}},
    "job.finished": {"status": "FINISHED:COMPLETED"},
    "site.joined": {"org": "hospital_a"},
    "site.left": {},
    "privacy.spent": {"epsilon": 1.5, "delta": 1e-5},
}  # fmt: skip


@pytest.fixture
def make_event() -> EventFactory:
    """Build a valid event dict of a type; keyword arguments replace envelope fields or the payload."""

    def build(event_type: str, **overrides: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "type": event_type,
            "occurred_at": datetime.now(UTC).isoformat(),
            "job_id": None if event_type.startswith("site.") else "job-1",
            "site": "hospital-a" if event_type.startswith(("site.", "contribution.")) else None,
            "round": 0 if event_type.startswith(("round.", "contribution.")) else None,
            "actor": None,
            "payload": dict(_DEFAULT_PAYLOADS[event_type]),
        }
        event.update(overrides)
        return event

    return build
