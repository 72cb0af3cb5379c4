"""Write keys: created, listed, revoked; only their SHA-256 is stored."""

import hashlib
import secrets

from sqlalchemy import Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert

from spoor.storage.tables import WriteKey


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(engine: Engine, name: str, source: str, key: str | None = None) -> str:
    """Create a key (random unless given) and return it: it cannot be read back later.

    Creating a key with a name that exists and the same value is a no-op, so
    scripts can ensure a known demo key idempotently.
    """
    key = key or "spk_" + secrets.token_urlsafe(24)
    with engine.begin() as conn:
        inserted = conn.execute(
            insert(WriteKey).values(name=name, source=source, key_hash=hash_key(key))
            .on_conflict_do_nothing().returning(WriteKey.id)
        ).first()
        if inserted is None:
            existing = conn.execute(select(WriteKey.key_hash).where(WriteKey.name == name)).scalar()
            if existing != hash_key(key):
                raise ValueError(f"a write key named {name!r} already exists with another value")
    return key


def list_keys(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(WriteKey.name, WriteKey.source, WriteKey.created_at,
                                   WriteKey.revoked_at).order_by(WriteKey.id))
        return [dict(row._mapping) for row in rows]


def revoke_key(engine: Engine, name: str) -> bool:
    with engine.begin() as conn:
        result = conn.execute(update(WriteKey).where(WriteKey.name == name, WriteKey.revoked_at.is_(None))
                              .values(revoked_at=func.now()))
        return result.rowcount > 0


def active_key_sources(engine: Engine) -> dict[str, str]:
    """key hash -> source, for keys that are not revoked."""
    with engine.connect() as conn:
        rows = conn.execute(select(WriteKey.key_hash, WriteKey.source).where(WriteKey.revoked_at.is_(None)))
        return {key_hash: source for key_hash, source in rows}
