"""Tests for the Alembic migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from admin_api.db import Database, upgrade
from admin_api.models import Base

HEAD = "0003_ledger_certs_checkpoints"
TABLES = {
    "alembic_version",
    "api_tokens",
    "audit_checkpoints",
    "audit_events",
    "certificates",
    "contributions",
    "ingested_events",
    "job_status_transitions",
    "jobs",
    "log_cursors",
    "privacy_spends",
    "round_metrics",
    "sites",
    "users",
}


def test_upgrade_from_empty(empty_database_url: str) -> None:
    database = Database(empty_database_url)
    try:
        assert database.current_revision() is None
        upgrade(empty_database_url)
        assert database.current_revision() == HEAD
        assert set(inspect(database.engine).get_table_names()) == TABLES
    finally:
        database.dispose()


def test_upgrade_twice_is_noop(database: Database) -> None:
    database.upgrade()
    assert database.current_revision() == HEAD


def test_migration_matches_models(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_downgrade_to_base(empty_database_url: str) -> None:
    database = Database(empty_database_url)
    try:
        database.upgrade()
        database.downgrade("base")
        assert database.current_revision() is None
        assert set(inspect(database.engine).get_table_names()) <= {"alembic_version"}
    finally:
        database.dispose()
