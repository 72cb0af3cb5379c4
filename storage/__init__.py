"""Stage 3: PostgreSQL. Schema (SQLAlchemy models + Alembic migrations), writers, read queries."""
