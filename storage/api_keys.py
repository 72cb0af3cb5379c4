"""API keys: narrow credentials for the admin API (migration 0017), created, listed, revoked.

A key has one ``scope``, what it may do besides nothing: ``recommendations`` reads the recommendation
routes and is refused (403) everywhere else; the admin token (SPOOR_ADMIN_TOKEN) stays the only
credential for the rest. As with write keys, only the SHA-256 of a key is stored, and a key is shown
once, when it is created.

``ApiKeyCache`` is what the admin API checks keys against: the active keys' hashes, read again from
PostgreSQL when they are older than ``refresh_s`` (``REFRESH_S``), so a revoked key is refused within
that time. A presented key is hashed before it is looked up: what the lookup's timing could tell is
about the SHA-256 of the guess, which does not help to find a key.
"""

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Engine, Integer, String, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from spoor.storage.tables import Base

log = logging.getLogger(__name__)

SCOPES = ("recommendations",)
REFRESH_S = 2.0  # a revoked key is refused within this (plus one read of the table)
RETRY_S = 1.0  # after a failed read, the last keys are used this long before the next try
PREFIX = "spr_"


class ApiKey(Base):
    """A credential of the admin API narrower than the admin token. Only the SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    scope: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def create_key(engine: Engine, name: str, scope: str, key: str | None = None) -> str:
    """Create a key (random unless given) and return it: it cannot be read back later. Creating a key
    whose name exists with the same value and scope is a no-op, so a script may ensure a known key."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: one of {', '.join(SCOPES)}")
    if not name or len(name) > 128:
        raise ValueError("a key's name is 1 to 128 characters")
    if key is not None and not (len(key) >= 16 and key.isascii() and key.isprintable() and " " not in key):
        raise ValueError("a key given by value must be at least 16 printable ASCII characters, no spaces")
    key = key or PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        inserted = conn.execute(insert(ApiKey).values(name=name, scope=scope, key_hash=hash_key(key))
                                .on_conflict_do_nothing().returning(ApiKey.id)).first()
        if inserted is None:
            existing = conn.execute(select(ApiKey.key_hash, ApiKey.scope, ApiKey.revoked_at)
                                    .where(ApiKey.name == name)).first()
            if existing is None:
                raise ValueError("that key value belongs to another key")
            if (existing.key_hash, existing.scope, existing.revoked_at) != (hash_key(key), scope, None):
                raise ValueError(f"an API key named {name!r} already exists (another value, scope, or revoked)")
    return key


def list_keys(engine: Engine) -> list[dict]:
    """Every key's name, scope, creation and revocation time (never its value), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(ApiKey.name, ApiKey.scope, ApiKey.created_at, ApiKey.revoked_at)
                            .order_by(ApiKey.id))
        return [dict(row._mapping) for row in rows]


def revoke_key(engine: Engine, name: str) -> bool:
    """Revoke the active key ``name``; False when there is none."""
    with engine.begin() as conn:
        result = conn.execute(update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
                              .values(revoked_at=func.now()))
        return result.rowcount > 0


@dataclass(frozen=True)
class Principal:
    """Who a request's key belongs to."""

    name: str
    scope: str


def active_keys(engine: Engine) -> dict[str, Principal]:
    """key hash -> its principal, for the keys not revoked."""
    with engine.connect() as conn:
        rows = conn.execute(select(ApiKey.key_hash, ApiKey.name, ApiKey.scope).where(ApiKey.revoked_at.is_(None)))
        return {key_hash: Principal(name, scope) for key_hash, name, scope in rows}


class ApiKeyCache:
    """The active keys, read again when older than ``refresh_s``.

    ``fresh()`` is cheap and never blocks; when it is False, ``refresh()`` (blocking: run it in a thread
    from async code) reads the table, once for every caller waiting at the same time. A failed read keeps
    the last keys for ``RETRY_S`` (a key can only be revoked while the database answers), then tries again.
    """

    def __init__(self, engine: Engine, refresh_s: float = REFRESH_S, clock=time.monotonic):
        self.engine = engine
        self.refresh_s = refresh_s
        self.clock = clock
        self.keys: dict[str, Principal] = {}
        self.expires = float("-inf")
        self._lock = threading.Lock()

    def fresh(self) -> bool:
        return self.clock() < self.expires

    def refresh(self) -> None:
        with self._lock:
            if self.fresh():
                return  # read by the caller this one waited for
            try:
                self.keys = active_keys(self.engine)
                self.expires = self.clock() + self.refresh_s
            except SQLAlchemyError as err:  # the database away: the admin token's routes do not need it
                log.warning("API key refresh failed, keeping %d known keys for %.0f s: %s",
                            len(self.keys), RETRY_S, err)
                self.expires = self.clock() + RETRY_S

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key`` as of the last read (call ``refresh`` first when not ``fresh``)."""
        return self.keys.get(hash_key(key)) if key else None
