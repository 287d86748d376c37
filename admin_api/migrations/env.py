"""Alembic environment of the admin service.

``admin_api.db.Database.upgrade`` passes an open connection in ``config.attributes["connection"]``. Run from the
``alembic`` command line (``alembic -c admin_api/migrations/alembic.ini upgrade head``), the URL comes from
``CONSORTIA_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from admin_api.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most columns, so later migrations rebuild tables in batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return

    from admin_api.db import Database

    url = os.environ.get("CONSORTIA_DATABASE_URL")
    if not url:
        raise RuntimeError(
            "CONSORTIA_DATABASE_URL is not set; set it to the database to migrate, for example "
            "sqlite:///./consortia-admin.sqlite"
        )
    database = Database(url)
    try:
        with database.write_engine.begin() as new_connection:
            _run(new_connection)
    finally:
        database.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run them against a database")
_run_online()
