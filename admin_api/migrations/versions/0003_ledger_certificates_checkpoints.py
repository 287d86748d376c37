"""Add the privacy ledger, the certificate list, audit chain checkpoints and the stuck-job grace timer.

Revision ID: 0003_ledger_certs_checkpoints
Revises: 0002_users_tokens
Create Date: 2026-12-06

Written by hand and checked against the models by tests/admin_api/test_admin_migrations.py. Checkpoints are
append-only like audit events: a trigger rejects UPDATE and DELETE (and TRUNCATE on PostgreSQL), so a stored
checkpoint cannot be moved to cover a rewritten event. ``jobs.missing_since`` persists the stuck-job detector's
grace timer across restarts of the service.

The revision id is shorter than the file name because Alembic's ``alembic_version.version_num`` holds 32 characters.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_ledger_certs_checkpoints"
down_revision: str | None = "0002_users_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_POSTGRESQL_APPEND_ONLY = [
    """
    CREATE FUNCTION consortia_reject_checkpoint_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_checkpoints is append-only: % rejected', TG_OP
            USING HINT = 'checkpoints cannot be changed or removed; run a full verification to add a new one';
    END;
    $$
    """,
    """
    CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION consortia_reject_checkpoint_change()
    """,
    """
    CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION consortia_reject_checkpoint_change()
    """,
]

_SQLITE_APPEND_ONLY = [
    """
    CREATE TRIGGER audit_checkpoints_reject_update BEFORE UPDATE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only: UPDATE rejected'); END
    """,
    """
    CREATE TRIGGER audit_checkpoints_reject_delete BEFORE DELETE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only: DELETE rejected'); END
    """,
]


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _create_privacy_spends() -> None:
    op.create_table(
        "privacy_spends",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=128), nullable=True),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("mechanism", sa.String(length=64), nullable=True),
        sa.Column("epsilon", sa.Double(), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("epsilon_budget", sa.Double(), nullable=True),
        sa.Column("epsilon_remaining", sa.Double(), nullable=True),
        sa.Column("recorded_at", _timestamp(), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.CheckConstraint("kind IN ('sample_level', 'client_level')", name=op.f("ck_privacy_spends_kind")),
        sa.ForeignKeyConstraint(["job_pk"], ["jobs.id"], name=op.f("fk_privacy_spends_job_pk_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_spends")),
    )
    op.create_index(op.f("ix_privacy_spends_job_pk"), "privacy_spends", ["job_pk"])
    op.create_index(op.f("ix_privacy_spends_site"), "privacy_spends", ["site"])
    op.create_index(
        "uq_privacy_spends_site",
        "privacy_spends",
        ["job_pk", "round", "site", "kind"],
        unique=True,
        sqlite_where=sa.text("site IS NOT NULL AND round IS NOT NULL"),
        postgresql_where=sa.text("site IS NOT NULL AND round IS NOT NULL"),
    )
    op.create_index(
        "uq_privacy_spends_job",
        "privacy_spends",
        ["job_pk", "round", "kind"],
        unique=True,
        sqlite_where=sa.text("site IS NULL AND round IS NOT NULL"),
        postgresql_where=sa.text("site IS NULL AND round IS NOT NULL"),
    )


def _create_certificates() -> None:
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("participant", sa.String(length=255), nullable=False),
        sa.Column("org", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=255), nullable=False),
        sa.Column("not_after", _timestamp(), nullable=False),
        sa.Column("issued_at", _timestamp(), nullable=False),
        sa.Column("issued_by", sa.String(length=255), nullable=True),
        sa.Column("revoked_at", _timestamp(), nullable=True),
        sa.Column("revocation_reason", sa.Text(), nullable=True),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.CheckConstraint("kind IN ('site', 'user', 'server')", name=op.f("ck_certificates_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificates")),
        sa.UniqueConstraint("participant", "fingerprint", name="uq_certificates_participant_fingerprint"),
    )
    op.create_index(op.f("ix_certificates_participant"), "certificates", ["participant"])


def _create_audit_checkpoints() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("verified_at", _timestamp(), nullable=False),
        sa.Column("verified_from_seq", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    op.create_index(op.f("ix_audit_checkpoints_seq"), "audit_checkpoints", ["seq"])


def upgrade() -> None:
    _create_privacy_spends()
    _create_certificates()
    _create_audit_checkpoints()
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("missing_since", _timestamp(), nullable=True))

    dialect = op.get_bind().dialect.name
    statements = _POSTGRESQL_APPEND_ONLY if dialect == "postgresql" else _SQLITE_APPEND_ONLY
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("missing_since")
    # Dropping the table drops its triggers; the PostgreSQL function goes afterwards.
    for table in ("audit_checkpoints", "certificates", "privacy_spends"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION consortia_reject_checkpoint_change()")
