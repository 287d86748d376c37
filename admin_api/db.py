"""Database engines, sessions and schema migrations.

SQLite (the default) runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers queue for the write lock instead of failing midway. PostgreSQL is selected by
a ``postgresql+psycopg://`` URL; there, writers serialize on an advisory lock that ``admin_api.services.audit`` takes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["MIGRATIONS_DIR", "SQLITE_BEGIN_OPTION", "SQLITE_BUSY_TIMEOUT_MS", "Database", "upgrade"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another writer's lock before failing with "database is locked"."""

SQLITE_BEGIN_OPTION = "consortia_sqlite_begin"
"""Execution option naming the SQLite BEGIN mode; write sessions set it to ``IMMEDIATE``."""
# Key of the PostgreSQL advisory lock that serializes migrations, per schema so parallel test schemas do not queue.
_MIGRATION_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.consortia_migrations'))"


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # isolation_level None stops the sqlite3 driver from issuing its own BEGIN, so _on_sqlite_begin decides.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Engine and session factories for one database URL.

    Args:
        url: SQLAlchemy URL, ``sqlite:///path`` or ``postgresql+psycopg://user@host:port/db``.
    """

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.dialect_name = self.url.get_backend_name()
        engine_options: dict[str, Any] = {}
        if self.dialect_name == "postgresql":
            engine_options["pool_pre_ping"] = True
        elif self.dialect_name == "sqlite":
            # Enough pooled connections that request threads rarely wait for one.
            engine_options.update(pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(url, **engine_options)

        write_engine = self.engine
        if self.dialect_name == "sqlite":
            event.listen(self.engine, "connect", _on_sqlite_connect)
            event.listen(self.engine, "begin", _on_sqlite_begin)
            write_engine = self.engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        self.write_engine: Engine = write_engine
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self.write_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Open a session for reading. On SQLite it must not write, because its transaction is not IMMEDIATE."""
        with self._read_sessions() as session:
            yield session

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """Open a session for a write transaction; the caller commits."""
        with self._write_sessions() as session:
            yield session

    def ping(self) -> None:
        """Run ``SELECT 1``.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: The database is unreachable.
        """
        with self.engine.connect() as connection:
            connection.execute(select(1))

    def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision`` in one transaction.

        Concurrent callers on PostgreSQL serialize on an advisory lock; on SQLite ``BEGIN IMMEDIATE`` serializes them.
        """
        self._migrate(command.upgrade, revision)
        logger.info(
            "database schema upgraded to %s",
            revision,
            extra={"database": self.url.render_as_string(hide_password=True)},
        )

    def downgrade(self, revision: str) -> None:
        """Revert Alembic migrations down to ``revision`` (``base`` removes every table) in one transaction.

        On PostgreSQL the audit table's append-only triggers go with the table, so this destroys the audit history.
        """
        self._migrate(command.downgrade, revision)
        logger.warning(
            "database schema downgraded to %s",
            revision,
            extra={"database": self.url.render_as_string(hide_password=True)},
        )

    def _migrate(self, alembic_command: Callable[[Config, str], None], revision: str) -> None:
        with self.write_engine.begin() as connection:
            if self.dialect_name == "postgresql":
                connection.execute(text(_MIGRATION_LOCK_SQL))
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            alembic_command(config, revision)

    def current_revision(self) -> str | None:
        """Return the Alembic revision the database is at, or None before the first migration."""
        with self.engine.connect() as connection:
            if not self.engine.dialect.has_table(connection, "alembic_version"):
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations to the database at ``url`` up to ``revision``.

    Args:
        url: SQLAlchemy URL of the database.
        revision: Target revision; ``head`` is the newest.
    """
    database = Database(url)
    try:
        database.upgrade(revision)
    finally:
        database.dispose()
