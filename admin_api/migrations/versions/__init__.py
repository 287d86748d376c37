"""Alembic revisions, applied in order by admin_api.db.upgrade."""
