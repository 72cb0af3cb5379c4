"""Browser origins allowed to send with a write key (column write_keys.allowed_origins, migration 0007).

An origin is ``scheme://host[:port]`` exactly as browsers send it in the Origin
header (lower case, no path, no default port), or ``*`` for any origin.
"""

from urllib.parse import urlsplit

from sqlalchemy import Engine, column, select, table, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Text

ANY_ORIGIN = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}

write_keys = table("write_keys", column("name"), column("key_hash"), column("revoked_at"),
                   column("allowed_origins", ARRAY(Text)))


def normalize_origin(value: str) -> str:
    """The Origin header value a browser on ``value`` sends; ValueError for anything else."""
    value = value.strip()
    if value == ANY_ORIGIN:
        return value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"not an origin: {value!r}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"an origin is http(s)://host[:port], got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"an origin has no path, query or credentials, got {value!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def set_origins(engine: Engine, name: str, origins: list[str]) -> list[str]:
    """Replace the origins of the active key ``name``; returns them normalised. KeyError if no such key."""
    normalized = sorted({normalize_origin(origin) for origin in origins})
    with engine.begin() as conn:
        result = conn.execute(update(write_keys)
                              .where(write_keys.c.name == name, write_keys.c.revoked_at.is_(None))
                              .values(allowed_origins=normalized))
    if result.rowcount == 0:
        raise KeyError(name)
    return normalized


def origins_of(engine: Engine, name: str) -> list[str] | None:
    with engine.connect() as conn:
        return conn.execute(select(write_keys.c.allowed_origins).where(write_keys.c.name == name)).scalar()


def active_key_origins(engine: Engine) -> dict[str, frozenset[str]]:
    """key hash -> allowed origins, for keys that are not revoked."""
    with engine.connect() as conn:
        rows = conn.execute(select(write_keys.c.key_hash, write_keys.c.allowed_origins)
                            .where(write_keys.c.revoked_at.is_(None)))
        return {key_hash: frozenset(origins or ()) for key_hash, origins in rows}
