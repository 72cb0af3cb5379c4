"""The HTTP collector: Segment's HTTP Tracking API in, canonical events to Kafka.

Contract:
- 200 ``{"success": true}`` only after Kafka acknowledged every event of the request.
- 400 when some event is invalid: each one is named (index, field, reason) and
  dead-lettered with its original payload; the valid events of the same batch
  are accepted (the body says how many).
- The long paths (/v1/batch, /v1/track, ...) and the short ones analytics-next and the mobile
  libraries post to (/v1/b, /v1/t, /v1/p, /v1/i, /v1/s, /v1/g, /v1/a) are one handler each:
  same answers, limits and dead letters; metrics name the long path.
- The body is JSON whatever its Content-Type (analytics-next sends text/plain to stay a simple
  CORS request), gzipped if Content-Encoding says so; the write key is in basic auth, a bearer
  token or the body's ``writeKey`` (ingest/auth.py).
- GET /v1/projects/{writeKey}/settings: the settings document the libraries fetch at start
  (ingest/segment_settings.py); 404 for a key that is unknown or revoked.
- 401 missing/unknown write key, 403 browser origin not allowed for the key (ingest/cors.py),
  413 body or batch too large, 429 rate limited,
  503 Kafka did not acknowledge (retry: redelivered events are deduplicated).
- Events are enriched at the edge (ingest/enrich.py); the raw client IP goes nowhere.
"""

import gc
import logging
import math
import time
import zlib
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import create_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spoor.consent import category_index
from spoor.ingest import IngestError, collector_metrics
from spoor.ingest.auth import RateLimiter, WriteKeyCache, write_key_from
from spoor.ingest.cors import CorsMiddleware, OriginPolicy
from spoor.ingest.intake import Intake, RequestFacts, parse_json
from spoor.ingest.producer import EventProducer, KafkaUnavailable
from spoor.ingest.segment_settings import api_host_and_protocol, settings_document
from spoor.settings import Settings

log = logging.getLogger(__name__)
SINGLE_MESSAGE_TYPES = ("track", "page", "identify", "screen", "alias", "group")
# Segment's short paths: analytics-next posts one message to /v1/<first letter of its type>, or a
# batch to /v1/b when batching; analytics-kotlin and analytics-swift upload to /v1/b.
SHORT_PATHS = {"b": "batch", "t": "track", "p": "page", "i": "identify", "s": "screen", "g": "group", "a": "alias"}
SETTINGS_CACHE_CONTROL = "public, max-age=60"


class RequestRejected(IngestError):
    """A request answered with an error status (401, 403, 413, 429...) before any of its messages is read."""

    def __init__(self, status: int, error: str, headers: dict | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers or {}


class Collector:
    def __init__(self, settings: Settings, producer: EventProducer, keys: WriteKeyCache,
                 origins: OriginPolicy | None = None):
        self.settings = settings
        self.origins = origins
        self.producer = producer
        self.keys = keys
        if settings.collector_public_url:  # refuse a malformed one at start, not on each settings request
            api_host_and_protocol(settings.collector_public_url, None, "http", "")
        self.limiter = RateLimiter(settings.rate_limit_events_per_s, settings.rate_limit_burst_events)
        self.partitions = producer.partitions(settings.events_topic)
        self.intake = Intake(settings.events_topic, settings.dead_letter_topic, self.partitions,
                             settings.max_event_bytes, max_future_event_s=settings.max_future_event_s,
                             max_nesting_depth=settings.max_nesting_depth,
                             consent_index=category_index(settings.consent_categories))

    async def handle(self, request: Request, endpoint: str) -> Response:
        started = time.perf_counter()
        try:
            response = await self._handle(request, endpoint)
        except RequestRejected as rejected:
            response = JSONResponse({"success": False, "error": rejected.error},
                                    status_code=rejected.status, headers=rejected.headers)
        collector_metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
        collector_metrics.REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: Request, endpoint: str) -> Response:
        received_at = datetime.now(timezone.utc)
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise RequestRejected(400, "the body must be a JSON object")
        write_key = write_key_from(request.headers.get("authorization"), body.get("writeKey"))
        source = self.keys.source_for(write_key)
        if source is None:
            raise RequestRejected(401, "missing or unknown write key (HTTP basic auth user name or 'writeKey')")
        denial = self.origins and self.origins.denial(request.headers.get("origin"), write_key)
        if denial:
            raise RequestRejected(403, denial)

        if endpoint == "batch":
            messages = body.get("batch")
            if not isinstance(messages, list):
                raise RequestRejected(400, "'batch' must be a list of messages")
            if len(messages) > self.settings.max_batch_events:
                raise RequestRejected(413, f"a batch holds at most {self.settings.max_batch_events} messages")
        else:
            messages = [body]
        collector_metrics.BATCH_EVENTS.observe(len(messages))

        wait = self.limiter.retry_after(write_key, len(messages))
        if wait:
            raise RequestRejected(429, "rate limit exceeded for this write key",
                                  {"Retry-After": str(max(1, math.ceil(wait)))})

        batch_context = body.get("context") if endpoint == "batch" and isinstance(body.get("context"), dict) else None
        facts = RequestFacts(received_at=received_at, source=source, endpoint=endpoint, sent_at=body.get("sentAt"),
                             context=batch_context, user_agent=request.headers.get("user-agent"),
                             peer_ip=request.client.host if request.client else None)
        records, rejected, _accepted = self.intake.records(messages, facts)
        try:
            await self.producer.send_all(records)
        except KafkaUnavailable as err:
            collector_metrics.KAFKA_FAILURES.inc()
            log.warning("Kafka did not acknowledge a request's records: %s", err)
            raise RequestRejected(503, "event store unavailable, retry later", {"Retry-After": "5"}) from err

        collector_metrics.EVENTS.labels("accepted").inc(len(messages) - len(rejected))
        if rejected:
            collector_metrics.EVENTS.labels("rejected").inc(len(rejected))
            return JSONResponse({"success": False, "accepted": len(messages) - len(rejected),
                                 "rejected": rejected}, status_code=400)
        return JSONResponse({"success": True})

    def segment_settings(self, request: Request) -> Response:
        """The Segment settings document of the key in the path; 404 if the key is unknown or revoked.

        404, not an empty document: analytics-next then does not load (its load promise rejects with
        this body's text, nothing is sent or queued), and the mobile libraries keep their configured
        defaults. A 200 without integrations."Segment.io" would make analytics-next fail on it, or send
        to Segment's own API host by default.
        """
        write_key = request.path_params["write_key"]
        if self.keys.source_for(write_key) is None:
            status, response = 404, JSONResponse(
                {"success": False, "error": "unknown or revoked write key"}, status_code=404)
        elif denial := (self.origins and self.origins.denial(request.headers.get("origin"), write_key)):
            status, response = 403, JSONResponse({"success": False, "error": denial}, status_code=403)
        else:
            server = request.scope.get("server") or ("127.0.0.1", self.settings.collector_port)
            api_host, protocol = api_host_and_protocol(
                self.settings.collector_public_url, request.headers.get("host"), request.url.scheme,
                fallback_host=f"{server[0]}:{server[1]}")
            status, response = 200, JSONResponse(settings_document(write_key, api_host, protocol),
                                                 headers={"Cache-Control": SETTINGS_CACHE_CONTROL})
        collector_metrics.REQUESTS.labels("settings", str(status)).inc()
        return response

    async def _read_json(self, request: Request):
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestRejected(413, f"the body may be at most {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestRejected(413, f"the body may be at most {limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if request.headers.get("content-encoding", "").lower() == "gzip":
            raw = _gunzip_bounded(raw, limit)
        try:
            return parse_json(raw)  # orjson, lone surrogates read as U+FFFD (ingest/intake.py)
        except orjson.JSONDecodeError as err:
            raise RequestRejected(400, f"the body is not valid JSON: {err}") from None


def _gunzip_bounded(raw: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        raise RequestRejected(400, "the body is not valid gzip") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise RequestRejected(413, f"the decompressed body may be at most {limit} bytes")
    return out


def quiet_garbage_collector() -> None:
    """Python's cyclic collector, set for a process whose requests allocate much and keep nothing.

    A request's objects (a parsed batch: thousands of dicts and strings) are freed by reference
    counting when it is answered, but while it runs they set off young collections, and every tenth
    of those an older one, each walking the app's long-lived objects (modules, the UA parser's rules,
    SQLAlchemy, the routes) to find them alive: a fifth of the collector's CPU in a flood (py-spy,
    bench/collector_throughput.py). Frozen, the objects alive at start are never walked again; the
    larger first threshold makes young collections rarer. Cyclic garbage is still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def create_app(settings: Settings) -> Starlette:
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        engine = create_engine(settings.database_url, pool_size=2, pool_pre_ping=True)
        producer = EventProducer(settings)
        keys = WriteKeyCache(engine, settings.write_key_refresh_s)
        state["origins"] = origins = OriginPolicy.from_database(engine, settings.write_key_refresh_s)
        state["collector"] = Collector(settings, producer, keys, origins)
        log.info("collector ready: %d write keys, producing to %s", len(keys.sources), settings.events_topic)
        quiet_garbage_collector()
        try:
            yield
        finally:
            keys.close()
            origins.close()
            producer.close()
            engine.dispose()

    def endpoint(name: str):
        async def route(request: Request) -> Response:
            return await state["collector"].handle(request, name)
        return route

    async def healthz(_request: Request) -> Response:
        collector = state.get("collector")
        if collector is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        failure = collector.producer.last_failure
        return JSONResponse({"status": "ok"} if failure is None else {"status": "kafka failing", "error": failure},
                            status_code=200 if failure is None else 503)

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def segment_settings(request: Request) -> Response:
        return state["collector"].segment_settings(request)

    routes = [Route("/v1/batch", endpoint("batch"), methods=["POST"])]
    routes += [Route(f"/v1/{name}", endpoint(name), methods=["POST"]) for name in SINGLE_MESSAGE_TYPES]
    routes += [Route(f"/v1/{short}", endpoint(name), methods=["POST"]) for short, name in SHORT_PATHS.items()]
    routes += [Route("/v1/projects/{write_key}/settings", segment_settings, methods=["GET"])]
    routes += [Route("/healthz", healthz), Route("/metrics", prometheus)]
    cors = Middleware(CorsMiddleware, policy=lambda: state.get("origins"))
    return Starlette(routes=routes, lifespan=lifespan, middleware=[cors])
