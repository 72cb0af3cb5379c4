"""CORS for browser clients: which web origins may send events, per write key.

Contract:
- A request without an Origin header (servers, apps, Segment libraries) is not affected.
- Segment's settings document (GET /v1/projects/{writeKey}/settings) is a simple request: labelled
  here like any other for an origin some key allows; the collector answers 403 when the key in the
  path does not allow it.
- Preflight (OPTIONS with Origin and Access-Control-Request-Method) carries no
  credentials, so it is answered for origins allowed by *some* active key: 204
  with the allowed method and headers, cached by the browser for 10 minutes;
  anything else 403 with the reason.
- An actual request from an origin no active key allows is refused with 403
  before its body is read. Once the write key is known, the collector refuses
  (403) an origin that this key does not allow (``OriginPolicy.denial``).
- Allowed origins are echoed back exactly, with ``Vary: Origin``; never ``*``, and
  ``Access-Control-Allow-Credentials`` is never sent: the collector uses no
  cookies, the write key travels in a header or the body.
"""

import logging
import threading
from collections.abc import Callable

import orjson
from sqlalchemy import Engine

from spoor.ingest import collector_metrics
from spoor.storage.write_key_origins import ANY_ORIGIN, active_key_origins
from spoor.storage.write_keys import hash_key

log = logging.getLogger(__name__)

ALLOWED_METHODS = "POST"
# X-Retry-Count: analytics-next (and the mobile libraries) number their retries in it; refusing it in
# the preflight would fail every retry of a browser's event after one failed send.
ALLOWED_HEADERS = frozenset({"authorization", "content-type", "content-encoding", "x-retry-count"})
PREFLIGHT_MAX_AGE_S = "600"
CORS_PATHS = "/v1/"


class OriginPolicy:
    """Allowed origins of the active write keys, refreshed in the background.

    ``load`` returns key hash -> allowed origins (``active_key_origins`` on PostgreSQL).
    """

    @classmethod
    def from_database(cls, engine: Engine, refresh_s: float) -> "OriginPolicy":
        return cls(lambda: active_key_origins(engine), refresh_s)

    def __init__(self, load: Callable[[], dict[str, frozenset[str]]], refresh_s: float):
        self.load = load
        self.refresh_s = refresh_s
        self._load()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="spoor-origins", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        by_key = self.load()
        self.by_key = by_key
        self.any_key = frozenset().union(*by_key.values()) if by_key else frozenset()

    def allowed_by_some_key(self, origin: str) -> bool:
        return origin in self.any_key or ANY_ORIGIN in self.any_key

    def denial(self, origin: str | None, write_key: str) -> str | None:
        """Why ``origin`` may not send with ``write_key``, or None when it may (or is not a browser)."""
        if origin is None:
            return None
        allowed = self.by_key.get(hash_key(write_key), frozenset())
        if origin in allowed or ANY_ORIGIN in allowed:
            return None
        return f"origin {origin} is not allowed for this write key (spoor keys origins NAME --origin ...)"

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self._load()
            except Exception as err:  # the database being away must not stop ingestion
                log.warning("allowed origins refresh failed, keeping the last set: %s", err)

    def close(self) -> None:
        self._stop.set()


class CorsMiddleware:
    """ASGI middleware answering preflights and labelling responses for allowed origins.

    ``policy`` is called per request: the OriginPolicy is built in the app's lifespan.
    """

    def __init__(self, app, policy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(CORS_PATHS):
            return await self.app(scope, receive, send)
        origin_raw = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin_raw is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = origin_raw.decode("latin-1")
        policy: OriginPolicy | None = self.policy()
        if policy is None:
            return await _answer(send, 503, {"success": False, "error": "starting"}, {b"retry-after": b"1"})

        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            return await self._preflight(send, policy, origin, headers)
        if not policy.allowed_by_some_key(origin):
            collector_metrics.REQUESTS.labels("cors", "403").inc()
            return await _answer(send, 403, {"success": False, "error": f"origin {origin} is not allowed"})

        cors_headers = [(b"access-control-allow-origin", origin_raw), (b"vary", b"Origin"),
                        (b"access-control-expose-headers", b"Retry-After")]

        async def labelled_send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors_headers]}
            await send(message)

        await self.app(scope, receive, labelled_send)

    async def _preflight(self, send, policy: OriginPolicy, origin: str, headers: dict) -> None:
        method = headers[b"access-control-request-method"].decode("latin-1")
        requested = {h.strip().lower() for h in headers.get(b"access-control-request-headers", b"")
                     .decode("latin-1").split(",") if h.strip()}
        if not policy.allowed_by_some_key(origin):
            error = f"origin {origin} is not allowed"
        elif method != ALLOWED_METHODS:
            error = f"method {method} is not allowed (only POST)"
        elif not requested <= ALLOWED_HEADERS:
            error = f"headers {sorted(requested - ALLOWED_HEADERS)} are not allowed"
        else:
            collector_metrics.REQUESTS.labels("preflight", "204").inc()
            return await _answer(send, 204, None, {
                b"access-control-allow-origin": origin.encode("latin-1"),
                b"access-control-allow-methods": ALLOWED_METHODS.encode(),
                b"access-control-allow-headers": b"Authorization, Content-Type, Content-Encoding, X-Retry-Count",
                b"access-control-max-age": PREFLIGHT_MAX_AGE_S.encode(),
                b"vary": b"Origin",
            })
        collector_metrics.REQUESTS.labels("preflight", "403").inc()
        await _answer(send, 403, {"success": False, "error": error}, {b"vary": b"Origin"})


async def _answer(send, status: int, body: dict | None, headers: dict[bytes, bytes] | None = None) -> None:
    payload = orjson.dumps(body) if body is not None else b""
    raw_headers = [(b"content-length", str(len(payload)).encode()), *(headers or {}).items()]
    if body is not None:
        raw_headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
