"""Apply Alembic migrations to the configured database.

Each area adds its own branch of migrations; "heads" applies all of them.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent


def config(database_url: str) -> Config:
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "heads") -> None:
    command.upgrade(config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Take the branch holding ``revision`` back to it (benchmarks comparing a schema with the one before)."""
    command.downgrade(config(database_url), revision)
