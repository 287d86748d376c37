"""Alembic migrations of the admin service."""
