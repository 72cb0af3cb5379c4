"""Write-key checks and per-key rate limits for the collector."""

import base64
import logging
import threading
import time

from sqlalchemy import Engine

from spoor.storage.write_keys import active_key_sources, hash_key

log = logging.getLogger(__name__)


def write_key_from(authorization: str | None, body_key) -> str | None:
    """The write key of a request, as Segment's libraries send it.

    - HTTP basic auth, the key as the user name (the Python, Node, Kotlin and Swift libraries,
      and analytics-next beside the body's key);
    - ``Authorization: Bearer <key>``;
    - ``writeKey`` in the JSON body (analytics-next, whose text/plain requests carry it there).

    A header that yields no key (malformed, or an empty user name) falls back to the body's key.
    """
    return _key_from_header(authorization) or (body_key if isinstance(body_key, str) and body_key else None)


def _key_from_header(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    user, _, _password = decoded.partition(":")
    return user or None


class WriteKeyCache:
    """Active keys from PostgreSQL, refreshed in the background; a refresh that fails keeps the last set."""

    def __init__(self, engine: Engine, refresh_s: float):
        self.engine = engine
        self.refresh_s = refresh_s
        self.sources: dict[str, str] = active_key_sources(engine)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="spoor-keys", daemon=True)
        self._thread.start()

    def source_for(self, key: str | None) -> str | None:
        return self.sources.get(hash_key(key)) if key else None

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.sources = active_key_sources(self.engine)
            except Exception as err:  # the database being away must not stop ingestion
                log.warning("write key refresh failed, keeping %d known keys: %s", len(self.sources), err)

    def close(self) -> None:
        self._stop.set()


class RateLimiter:
    """Token bucket per write key, counted in events."""

    def __init__(self, events_per_s: float, burst: int):
        self.rate = events_per_s
        self.burst = burst
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def retry_after(self, key: str, events: int, now: float | None = None) -> float:
        """Take ``events`` tokens; return 0 if allowed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if events <= tokens:
            self.buckets[key] = (tokens - events, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (events - tokens) / self.rate
