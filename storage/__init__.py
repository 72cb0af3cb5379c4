"""Stage 3: PostgreSQL. Schema (SQLAlchemy models + Alembic migrations), writers, read queries."""

from spoor.errors import SpoorError


class StorageError(SpoorError):
    """Root of every error this package raises on purpose (most of it raises only ValueError / KeyError)."""
