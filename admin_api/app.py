"""Application factory of the admin service: ``uvicorn --factory admin_api.app:create_app``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from admin_api.api.middleware import BodySizeLimitMiddleware, NulByteMiddleware, RequestIdMiddleware
from admin_api.api.openapi import document_problem_responses
from admin_api.api.problems import install_problem_handlers
from admin_api.api.routes import audit, events, health, jobs, ops, privacy, reports, sites, users
from admin_api.db import Database
from admin_api.services.console_audit import ConsoleAuditIngester
from admin_api.services.flare_actions import FlareActions, FlareApiActions
from admin_api.services.reconciler import FlareApiJobSource, FlareJobSource, ReconcilerLoop
from admin_api.services.stuck_jobs import DEFAULT_GRACE, StuckJobDetector
from admin_api.services.users import CONSORTIUM_FILE_NAME, ConsortiumDirectory, load_directory, sync_users
from admin_api.settings import Settings, load_settings

__all__ = ["MAX_BODY_BYTES", "create_app"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body accepted (413 above); a full batch of 500 events is far smaller."""


def _server_audit_log(settings: Settings) -> Path | None:
    """Return the FLARE server's audit.log, ``<kits_dir>/<server name>/audit.log`` from the workspace state."""
    if settings.workspace is None:
        return None
    state_file = settings.workspace / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        return Path(state["kits_dir"]) / state["server_name"] / "audit.log"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning(
            "console audit ingestion disabled: cannot read kits_dir and server_name from %s: %s", state_file, exc
        )
        return None


def _build_reconciler(
    settings: Settings,
    database: Database,
    job_source: FlareJobSource | None,
    *,
    console_audit_log: Path | None,
    stuck_job_grace: timedelta,
) -> ReconcilerLoop | None:
    if job_source is None and settings.flare_admin_kit is not None:
        assert settings.flare_admin_user is not None  # Settings requires it together with the kit
        job_source = FlareApiJobSource(
            str(settings.flare_admin_kit), settings.flare_admin_user, timeout_s=settings.flare_timeout_s
        )
    if job_source is None:
        logger.info("reconciler disabled: CONSORTIA_FLARE_ADMIN_KIT is not set")
        return None
    steps: list[tuple[str, Callable[[Session], object]]] = []
    audit_log = console_audit_log or _server_audit_log(settings)
    if audit_log is not None:
        ingester = ConsoleAuditIngester(audit_log, service_user=settings.flare_admin_user)
        steps.append(("console audit ingestion", ingester.ingest))
        logger.info("ingesting FLARE console commands from %s", audit_log)
    if hasattr(job_source, "system_snapshot"):
        detector = StuckJobDetector(job_source, grace=stuck_job_grace)  # type: ignore[arg-type]
        steps.append(("stuck job detection", detector.check))
    return ReconcilerLoop(database, job_source, interval_s=settings.reconcile_interval_s, steps=steps)


def _build_flare_actions(settings: Settings) -> FlareActions | None:
    if settings.flare_admin_kit is None or settings.flare_admin_user is None:
        return None
    return FlareApiActions(str(settings.flare_admin_kit), settings.flare_admin_user, timeout_s=settings.flare_timeout_s)


def _load_users(settings: Settings, database: Database) -> ConsortiumDirectory:
    """Sync users from the workspace's consortium file; without one only the configured tokens authenticate.

    Raises:
        ConfigurationError: The consortium file exists but is invalid, so roles cannot be trusted.
    """
    if settings.workspace is None:
        logger.info("no CONSORTIA_WORKSPACE: users are not synced, only the configured tokens authenticate")
        return ConsortiumDirectory()
    if not (settings.workspace / CONSORTIUM_FILE_NAME).is_file():
        logger.warning(
            "no %s in workspace %s: users are not synced, only the configured tokens authenticate",
            CONSORTIUM_FILE_NAME,
            settings.workspace,
        )
        return ConsortiumDirectory()
    directory = load_directory(settings.workspace)
    with database.write_session() as session:
        sync_users(session, directory.users)
        session.commit()
    return directory


def create_app(
    settings: Settings | None = None,
    *,
    job_source: FlareJobSource | None = None,
    flare_actions: FlareActions | None = None,
    console_audit_log: Path | None = None,
    stuck_job_grace: timedelta = DEFAULT_GRACE,
) -> FastAPI:
    """Build the admin service.

    Start-up applies database migrations (``upgrade head``), syncs users from ``<workspace>/consortium.yml`` when
    a workspace is set, and starts the reconciler when a FLARE admin kit or ``job_source`` is given. The reconciler
    also ingests the FLARE server's audit.log and detects stuck jobs. Shutdown stops it and closes the database.

    Args:
        settings: Settings to use; read from ``CONSORTIA_*`` environment variables when None.
        job_source: FLARE job source for the reconciler, overriding the one built from the admin kit setting.
        flare_actions: FLARE connection for job submissions and aborts, overriding the one built from the admin kit.
        console_audit_log: FLARE server audit.log to ingest; found through the workspace's state.json when None.
        stuck_job_grace: How long a RUNNING job may lack a job process before it is recorded as abandoned.

    Raises:
        ConfigurationError: ``settings`` is None and the environment contains invalid settings, or the workspace's
            consortium file is missing or invalid (raised at start-up).
    """
    resolved = settings if settings is not None else load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(resolved.database_url)
        await run_in_threadpool(database.upgrade)
        app.state.database = database
        directory = await run_in_threadpool(_load_users, resolved, database)
        app.state.site_orgs = dict(directory.site_orgs)
        actions = flare_actions if flare_actions is not None else _build_flare_actions(resolved)
        app.state.flare_actions = actions
        reconciler = _build_reconciler(
            resolved, database, job_source, console_audit_log=console_audit_log, stuck_job_grace=stuck_job_grace
        )
        if reconciler is not None:
            reconciler.start()
        app.state.reconciler = reconciler
        try:
            yield
        finally:
            if reconciler is not None:
                await run_in_threadpool(reconciler.stop)
            close = getattr(actions, "close", None)
            if callable(close):
                await run_in_threadpool(close)
            database.dispose()

    app = FastAPI(
        title="Consortia admin API",
        version="1",
        summary="Job state, metrics and a tamper-evident audit chain for every FLARE job.",
        lifespan=lifespan,
    )
    app.state.settings = resolved
    install_problem_handlers(app)
    # Added last, so it runs first: the body limit's 413 carries the request id too.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(NulByteMiddleware)
    app.add_middleware(RequestIdMiddleware)
    for module in (health, events, jobs, sites, privacy, audit, reports, ops, users):
        app.include_router(module.router)
    document_problem_responses(app)
    return app
