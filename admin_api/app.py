"""Application factory of the admin service: ``uvicorn --factory admin_api.app:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from admin_api.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from admin_api.api.problems import install_problem_handlers
from admin_api.api.routes import audit, events, health, jobs, ops, reports, sites
from admin_api.db import Database
from admin_api.services.reconciler import FlareApiJobSource, FlareJobSource, ReconcilerLoop
from admin_api.settings import Settings, load_settings

__all__ = ["MAX_BODY_BYTES", "create_app"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body accepted (413 above); a full batch of 500 events is far smaller."""


def _build_reconciler(
    settings: Settings, database: Database, job_source: FlareJobSource | None
) -> ReconcilerLoop | None:
    if job_source is None and settings.flare_admin_kit is not None:
        assert settings.flare_admin_user is not None  # Settings requires it together with the kit
        job_source = FlareApiJobSource(
            str(settings.flare_admin_kit), settings.flare_admin_user, timeout_s=settings.flare_timeout_s
        )
    if job_source is None:
        logger.info("reconciler disabled: CONSORTIA_FLARE_ADMIN_KIT is not set")
        return None
    return ReconcilerLoop(database, job_source, interval_s=settings.reconcile_interval_s)


def create_app(settings: Settings | None = None, *, job_source: FlareJobSource | None = None) -> FastAPI:
    """Build the admin service.

    Start-up applies database migrations (``upgrade head``) and starts the reconciler when a FLARE admin kit or
    ``job_source`` is given; shutdown stops it and closes the database.

    Args:
        settings: Settings to use; read from ``CONSORTIA_*`` environment variables when None.
        job_source: FLARE job source for the reconciler, overriding the one built from the admin kit setting.

    Raises:
        ConfigurationError: ``settings`` is None and the environment contains invalid settings.
    """
    resolved = settings if settings is not None else load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(resolved.database_url)
        await run_in_threadpool(database.upgrade)
        app.state.database = database
        reconciler = _build_reconciler(resolved, database, job_source)
        if reconciler is not None:
            reconciler.start()
        app.state.reconciler = reconciler
        try:
            yield
        finally:
            if reconciler is not None:
                await run_in_threadpool(reconciler.stop)
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
    app.add_middleware(RequestIdMiddleware)
    for module in (health, events, jobs, sites, audit, reports, ops):
        app.include_router(module.router)
    return app
