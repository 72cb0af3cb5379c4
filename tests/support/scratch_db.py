"""Throw-away databases on the configured PostgreSQL server, for tests and benchmarks."""

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


class ScratchDatabase:
    """Creates the empty database ``name`` (letters, digits, ``_``) next to ``server_url``'s."""

    def __init__(self, server_url: str, name: str):
        if not name.replace("_", "").isalnum():
            raise ValueError(f"scratch database name must be letters, digits and _: {name!r}")
        self.name = name
        server = make_url(server_url)
        self.url = server.set(database=name).render_as_string(hide_password=False)
        self._admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()
