"""Create the admin service tables and make audit events append-only.

Revision ID: 0001_initial
Revises:
Create Date: 2026-12-04

Written by hand and checked against the models by tests/admin_api/test_migrations.py. The triggers stop UPDATE and
DELETE (and TRUNCATE on PostgreSQL) of audit events inside the database, so even a bug in the service or a manual
SQL session cannot rewrite history without first dropping the trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_STATUSES = (
    "'SUBMITTED', 'APPROVED', 'DISPATCHED', 'RUNNING', 'FINISHED:COMPLETED', 'FINISHED:ABORTED', "
    "'FINISHED:EXECUTION_EXCEPTION', 'FINISHED:ABNORMAL', 'FINISHED:CAN_NOT_SCHEDULE', 'FINISHED:FAILED_TO_RUN', "
    "'FINISHED:ABANDONED'"
)

_POSTGRESQL_APPEND_ONLY = [
    """
    CREATE FUNCTION consortia_reject_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_events is append-only: % rejected', TG_OP
            USING HINT = 'audit events cannot be changed or removed; append a correcting event instead';
    END;
    $$
    """,
    """
    CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION consortia_reject_audit_change()
    """,
    """
    CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION consortia_reject_audit_change()
    """,
]

_SQLITE_APPEND_ONLY = [
    """
    CREATE TRIGGER audit_events_reject_update BEFORE UPDATE ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE rejected'); END
    """,
    """
    CREATE TRIGGER audit_events_reject_delete BEFORE DELETE ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE rejected'); END
    """,
]


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _create_job_tables() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("org", sa.String(length=128), nullable=True),
        sa.Column("first_seen", _timestamp(), nullable=False),
        sa.Column("last_seen", _timestamp(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_at", _timestamp(), nullable=True),
        sa.CheckConstraint("status IN ('unknown', 'online', 'offline')", name=op.f("ck_sites_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sites")),
        sa.UniqueConstraint("name", name=op.f("uq_sites_name")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("submitter", sa.String(length=255), nullable=True),
        sa.Column("submitter_org", sa.String(length=128), nullable=True),
        sa.Column("submitter_role", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("submitted_at", _timestamp(), nullable=True),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.Column("num_rounds", sa.Integer(), nullable=True),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.CheckConstraint(f"status IN ({_JOB_STATUSES})", name=op.f("ck_jobs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_jobs_job_id")),
    )
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"])
    op.create_index(op.f("ix_jobs_submitter"), "jobs", ["submitter"])
    op.create_table(
        "job_status_transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=False),
        sa.Column("at", _timestamp(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=True),
        sa.CheckConstraint("source IN ('event', 'reconciler')", name=op.f("ck_job_status_transitions_source")),
        sa.ForeignKeyConstraint(["job_pk"], ["jobs.id"], name=op.f("fk_job_status_transitions_job_pk_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_status_transitions")),
    )
    op.create_index(op.f("ix_job_status_transitions_job_pk"), "job_status_transitions", ["job_pk"])


def _create_round_tables() -> None:
    op.create_table(
        "round_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=128), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(["job_pk"], ["jobs.id"], name=op.f("fk_round_metrics_job_pk_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_metrics")),
    )
    op.create_index(
        "uq_round_metrics_site",
        "round_metrics",
        ["job_pk", "round", "site"],
        unique=True,
        sqlite_where=sa.text("site IS NOT NULL"),
        postgresql_where=sa.text("site IS NOT NULL"),
    )
    op.create_index(
        "uq_round_metrics_global",
        "round_metrics",
        ["job_pk", "round"],
        unique=True,
        sqlite_where=sa.text("site IS NULL"),
        postgresql_where=sa.text("site IS NULL"),
    )
    op.create_table(
        "contributions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=128), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("num_examples", sa.Integer(), nullable=True),
        sa.Column("occurred_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(["job_pk"], ["jobs.id"], name=op.f("fk_contributions_job_pk_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contributions")),
        sa.UniqueConstraint("job_pk", "round", "site", name="uq_contributions_job_pk_round_site"),
    )


def _create_event_tables() -> None:
    op.create_table(
        "ingested_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", _timestamp(), nullable=False),
        sa.Column("received_at", _timestamp(), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("site", sa.String(length=128), nullable=True),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingested_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_ingested_events_event_id")),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("occurred_at", _timestamp(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("prev_hash", name=op.f("uq_audit_events_prev_hash")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_events_hash")),
    )
    op.create_index(op.f("ix_audit_events_target"), "audit_events", ["target"])


def upgrade() -> None:
    _create_job_tables()
    _create_round_tables()
    _create_event_tables()

    dialect = op.get_bind().dialect.name
    statements = _POSTGRESQL_APPEND_ONLY if dialect == "postgresql" else _SQLITE_APPEND_ONLY
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    # Dropping the table drops its triggers; the PostgreSQL function goes afterwards.
    for table in (
        "audit_events",
        "ingested_events",
        "contributions",
        "round_metrics",
        "job_status_transitions",
        "jobs",
        "sites",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION consortia_reject_audit_change()")
