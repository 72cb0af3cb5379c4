"""Apply Alembic migrations to the configured database.

Each area adds its own branch of migrations; "heads" applies all of them.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent


def upgrade(database_url: str, revision: str = "heads") -> None:
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, revision)
