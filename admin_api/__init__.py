"""Consortia admin service: records job state, metrics and a tamper-evident audit chain for every FLARE job.

Layers run one way: ``api`` (routes, dependencies, problem details) calls ``services``, which use ``models`` (ORM)
and the pure helpers in ``core``. ``admin_api.app.create_app`` builds the FastAPI application and
``python -m admin_api`` serves it.
"""
