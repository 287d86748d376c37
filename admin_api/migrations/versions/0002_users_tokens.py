"""Add users, API tokens, log cursors, the requester of API-submitted jobs, and the ``api`` status source.

Revision ID: 0002_users_tokens
Revises: 0001_initial
Create Date: 2026-12-05

Written by hand and checked against the models by tests/admin_api/test_admin_migrations.py. SQLite cannot alter a
CHECK constraint, so the transitions table is rebuilt in batch mode there.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_users_tokens"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SOURCES_BEFORE = "source IN ('event', 'reconciler')"
_SOURCES_AFTER = "source IN ('event', 'reconciler', 'api')"


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _create_user_tables() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("org", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.Column("revoked_at", _timestamp(), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["user_pk"], ["users.id"], name=op.f("fk_api_tokens_user_pk_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_id", name=op.f("uq_api_tokens_token_id")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
    )
    op.create_index(op.f("ix_api_tokens_user_pk"), "api_tokens", ["user_pk"])
    op.create_table(
        "log_cursors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("inode", sa.BigInteger(), nullable=True),
        sa.Column("head_sha256", sa.String(length=64), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_cursors")),
        sa.UniqueConstraint("name", name=op.f("uq_log_cursors_name")),
    )


def _replace_source_check(condition: str) -> None:
    with op.batch_alter_table("job_status_transitions", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_job_status_transitions_source"), type_="check")
        batch.create_check_constraint(op.f("ck_job_status_transitions_source"), sa.text(condition))


def upgrade() -> None:
    _create_user_tables()
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("requested_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("requested_by_org", sa.String(length=128), nullable=True))
        batch.create_index(op.f("ix_jobs_requested_by"), ["requested_by"])
    _replace_source_check(_SOURCES_AFTER)


def downgrade() -> None:
    _replace_source_check(_SOURCES_BEFORE)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_requested_by"))
        batch.drop_column("requested_by_org")
        batch.drop_column("requested_by")
    for table in ("log_cursors", "api_tokens", "users"):
        op.drop_table(table)
