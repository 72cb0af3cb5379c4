"""HTTP API for segments, campaigns, users and recommendations (FastAPI; OpenAPI at /openapi.json, docs at /docs).

Every route except /healthz (and the OpenAPI documents) needs ``Authorization: Bearer <SPOOR_ADMIN_TOKEN>``;
the recommendation routes (``/v1/recommendations/...``) also take an API key of scope ``recommendations``
(storage/api_keys.py, ``spoor keys create-reader``), which every other route refuses with a 403.
Definitions are the same YAML/JSON documents as the CLI takes (docs/segments.md); errors in them are answered 400
with the reason.

``AdminGuard`` checks the credential before a byte of the body is read, and reads at most
``SPOOR_ADMIN_MAX_BODY_BYTES`` of it (413 past that, or when Content-Length says more), chunked or not.
"""

import hmac
import json
import re
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from spoor.campaigns import campaign_dispatch
from spoor.campaigns.campaign_dispatch import CampaignStore, UnknownCampaign
from spoor.campaigns.campaign_spec import parse_campaign
from spoor.campaigns.webhook_delivery import check_webhook
from spoor.cli.attribution_api import attribution_router
from spoor.cli.campaign_experiment_api import campaign_experiment_router
from spoor.errors import SpoorError
from spoor.privacy.consent import set_consent
from spoor.privacy.erasure import erase_user, require_audit_key
from spoor.segments import SegmentsError, membership
from spoor.segments.membership import SegmentStore, UnknownSegment, utcnow
from spoor.segments.segment_fields import FIELDS
from spoor.segments.segment_language import parse_segment
from spoor.settings import Settings
from spoor.storage import recommendations
from spoor.storage.api_keys import ApiKeyCache, Principal
from spoor.storage.identities import canonical_key, ids_of
from spoor.storage.recommendation_reads import RecommendationService, ServedLists
from spoor.storage.tables import UserActivity, UserProfile

# PostgreSQL text cannot hold U+0000: a name or key with it would fail its query (a 500).
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Path(max_length=64, pattern=NO_NUL)]
UserKey = Annotated[str, Path(min_length=1, max_length=256, pattern=NO_NUL)]
ProductId = Annotated[str, Path(min_length=1, max_length=256, pattern=NO_NUL)]
TopK = Annotated[int, Query(ge=1, le=recommendations.MAX_K, description="How many products: 1 to 100.")]
ADMIN = Principal("admin", "admin")
# What each API key scope may call, and nothing else: the method, the whole path matched, in words.
SCOPE_ROUTES = {"recommendations": ("GET", re.compile(r"/v1/recommendations/(users|products)/[^/]+"),
                                    "GET /v1/recommendations/users/{user_key} and /v1/recommendations/products/"
                                    "{product_id}")}
SEGMENT_EXAMPLE = {"name": "shoe_fans", "description": "frequent shoe buyers",
                   "where": {"all": ["purchases_30d >= 2", 'favourite_category == "shoes"',
                                     'did "Product Added" in last 24h and not "Order Completed"']}}
CAMPAIGN_EXAMPLE = {"name": "cart_rescue", "audience": {"trigger": "cart_abandonment"},
                    "action": {"webhook": "https://crm.example/hooks/spoor"}, "delay": "30m",
                    "frequency_cap": {"max": 1, "per": "7d"}, "quiet_hours": {"start": "21:00", "end": "08:00"},
                    "expires_after": "2d", "holdout_percent": 10}


class Recommendation(BaseModel):
    product_id: str
    score: float = Field(description="Higher is better; comparable within one list only.")
    reason: str = Field(description='"bought with P", "viewed with P", "buy again", "popular in C", "trending now"')


class UserRecommendations(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "user_key": "17850", "personal": True, "items": [
            {"product_id": "71053", "score": 1.42, "reason": "buy again"},
            {"product_id": "84029G", "score": 0.87, "reason": "bought with 85123A"},
            {"product_id": "22423", "score": 0.0005, "reason": "trending now"}]}]})

    user_key: str = Field(description="The id asked for (any of the user's ids finds the user).")
    personal: bool = Field(description="False when the user's own data was not used: unknown, new, erased, "
                                       "or opted out; the list is then what is popular and trending.")
    items: list[Recommendation]


class ProductRecommendations(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "product_id": "85123A", "items": [
            {"product_id": "84029G", "score": 1.0, "reason": "bought with 85123A"},
            {"product_id": "22752", "score": 0.61, "reason": "viewed with 85123A"}]}]})

    product_id: str
    items: list[Recommendation]


def create_api(settings: Settings, engine: Engine, clock=utcnow, api_keys: ApiKeyCache | None = None) -> FastAPI:
    if not settings.admin_token:
        raise SegmentsError("SPOOR_ADMIN_TOKEN is not set: the API does not run without authentication")
    require_audit_key(settings)  # DELETE /users/{key} needs it: refuse at start, not at the first erasure
    app = FastAPI(title="Spoor segments and campaigns", version="1",
                  description="Define, preview, launch and pause segments and campaigns; read a user's profile, "
                              "segments and campaign history; record consent; erase a user.")
    bearer = HTTPBearer(auto_error=False)

    def authenticated(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        # AdminGuard has checked already, before the body; kept so each route declares its security.
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(),
                                                          settings.admin_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def recommendation_reader(request: Request, _credentials=Depends(bearer)) -> None:
        # AdminGuard let through the admin token or a key of scope "recommendations", and said which.
        if request.scope.get("state", {}).get("principal") is None:
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authenticated)]
    segment_store, campaign_store = SegmentStore(engine), CampaignStore(engine)
    open_paths = {"/healthz", app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    api_keys = api_keys or ApiKeyCache(engine)
    served = ServedLists(engine, api_keys=api_keys)  # recommendations in memory (see the routes below)
    app.add_middleware(RecommendationFastPath, served=served)  # inside AdminGuard: after the credential check
    app.add_middleware(AdminGuard, token=settings.admin_token, max_body_bytes=settings.admin_max_body_bytes,
                       open_paths=frozenset(p for p in open_paths if p), api_keys=api_keys)

    @app.exception_handler(SpoorError)  # a refusal of the request's content: bad definitions, unknown names
    async def definition_error(_request, err: SpoorError):
        status = 404 if isinstance(err, (UnknownSegment, UnknownCampaign)) else 400
        return JSONResponse({"detail": str(err)}, status_code=status)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/fields", dependencies=auth, summary="The field catalogue segment conditions may use")
    def fields() -> list[dict]:
        return [{"name": f.name, "type": f.type, "source": f.source, "description": f.description}
                for f in FIELDS.values()]

    # Segments
    @app.get("/segments", dependencies=auth)
    def list_segments() -> list[dict]:
        return segment_store.rows()

    @app.put("/segments/{name}", dependencies=auth, summary="Create or replace a segment (status unchanged)")
    def put_segment(name: Name, definition: Annotated[dict, Body(examples=[SEGMENT_EXAMPLE])]) -> dict:
        spec = parse_segment({**definition, "name": definition.get("name", name)})
        if spec.name != name:
            raise SegmentsError(f"the definition is named {spec.name!r}, the path says {name!r}")
        segment_store.save(spec)
        return {**segment_store.row(name), "definition": spec.model_dump(mode="json", by_alias=True)}

    @app.get("/segments/{name}", dependencies=auth)
    def get_segment(name: Name) -> dict:
        return {**segment_store.row(name),
                "definition": segment_store.get(name).model_dump(mode="json", by_alias=True)}

    @app.post("/segments/preview", dependencies=auth, summary="Size and sample of a definition, without saving")
    def preview_definition(definition: Annotated[dict, Body(examples=[SEGMENT_EXAMPLE])],
                           sample: int = Query(10, ge=0, le=100)) -> dict:
        return membership.preview(engine, parse_segment(definition), segment_store.specs(), clock(), sample)

    @app.get("/segments/{name}/preview", dependencies=auth, summary="Size and sample of a saved segment now")
    def preview_segment(name: Name, sample: int = Query(10, ge=0, le=100)) -> dict:
        return membership.preview(engine, segment_store.get(name), segment_store.specs(), clock(), sample)

    @app.post("/segments/{name}/launch", dependencies=auth, summary="Maintain membership (computed at once)")
    def launch_segment(name: Name) -> dict:
        segment_store.set_status(name, "active")
        entered, left = membership.full_recompute(engine, clock(), [name])[name]
        return {**segment_store.row(name), "entered": entered, "left": left}

    @app.post("/segments/{name}/pause", dependencies=auth, summary="Stop maintaining membership")
    def pause_segment(name: Name) -> dict:
        segment_store.set_status(name, "paused")
        return segment_store.row(name)

    @app.post("/segments/{name}/recompute", dependencies=auth, summary="Full recompute now")
    def recompute_segment(name: Name) -> dict:
        entered, left = membership.full_recompute(engine, clock(), [name])[name]
        return {"segment": name, "entered": entered, "left": left}

    @app.get("/segments/{name}/members", dependencies=auth)
    def segment_members(name: Name, limit: int = Query(100, ge=1, le=10_000),
                        after: str | None = Query(None, max_length=256)) -> list[dict]:
        segment_store.row(name)
        return membership.members(engine, name, limit, after)

    @app.get("/segments/{name}/history", dependencies=auth, summary="Latest entries and exits")
    def segment_history(name: Name, limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
        segment_store.row(name)
        return membership.history(engine, name, limit)

    @app.get("/segments/{name}/sizes", dependencies=auth, summary="Segment size at each step from start to end")
    def segment_sizes(name: Name, start: datetime, end: datetime,
                      step_s: int = Query(3600, ge=60, le=366 * 86400)) -> list[dict]:
        segment_store.row(name)
        return membership.sizes(engine, name, start, end, timedelta(seconds=step_s))

    # Campaigns
    @app.get("/campaigns", dependencies=auth)
    def list_campaigns() -> list[dict]:
        return campaign_store.rows()

    @app.put("/campaigns/{name}", dependencies=auth, summary="Create or replace a campaign (status unchanged)")
    def put_campaign(name: Name, definition: Annotated[dict, Body(examples=[CAMPAIGN_EXAMPLE])]) -> dict:
        spec = parse_campaign({**definition, "name": definition.get("name", name)})
        if spec.name != name:
            raise SegmentsError(f"the definition is named {spec.name!r}, the path says {name!r}")
        check_webhook(spec, settings)
        campaign_store.save(spec)
        return campaign_store.get(name)[1]

    @app.get("/campaigns/{name}", dependencies=auth)
    def get_campaign(name: Name) -> dict:
        return campaign_store.get(name)[1]

    @app.get("/campaigns/{name}/preview", dependencies=auth, summary="Who the campaign would reach")
    def preview_campaign(name: Name, sample: int = Query(10, ge=0, le=100)) -> dict:
        return campaign_dispatch.preview(engine, campaign_store.get(name)[0], clock(), sample)

    @app.post("/campaigns/{name}/launch", dependencies=auth)
    def launch_campaign(name: Name) -> dict:
        spec, _ = campaign_store.get(name)
        if spec.action.webhook and not settings.campaign_webhook_secret:
            raise SegmentsError("SPOOR_CAMPAIGN_WEBHOOK_SECRET is not set: webhooks cannot be signed")
        check_webhook(spec, settings)
        campaign_store.launch(name, clock())
        return campaign_store.get(name)[1]

    @app.post("/campaigns/{name}/pause", dependencies=auth)
    def pause_campaign(name: Name) -> dict:
        campaign_store.pause(name)
        return campaign_store.get(name)[1]

    @app.get("/campaigns/{name}/report", dependencies=auth, summary="Conversion of treated vs holdout, with lift")
    def campaign_report(name: Name, days: int | None = Query(None, ge=1, le=90)) -> dict:
        return campaign_dispatch.report(engine, name, days)

    # Users: the key in the path may be any of the user's ids (docs/identity.md)
    @app.get("/users/{user_key}", dependencies=auth,
             summary="Profile, activity, segments, campaign history and ids of the user an id belongs to")
    def get_user(user_key: UserKey) -> dict[str, Any]:
        return user_view(engine, user_key)

    @app.put("/users/{user_key}/consent", dependencies=auth,
             summary="Record the person's consent per purpose (docs/privacy.md#consent), opt-out and time zone")
    def put_consent(user_key: UserKey, opted_out: bool | None = Body(None, embed=True),
                    time_zone: str | None = Body(None, embed=True, max_length=64),
                    analytics: StrictBool | None = Body(None, embed=True),
                    marketing: StrictBool | None = Body(None, embed=True),
                    personalisation: StrictBool | None = Body(None, embed=True)) -> dict:
        purposes = {name: value for name, value in (("analytics", analytics), ("marketing", marketing),
                                                     ("personalisation", personalisation)) if value is not None}
        return set_consent(engine, resolve_user(engine, user_key), opted_out, time_zone, purposes)

    @app.delete("/users/{user_key}", dependencies=auth,
                summary="Erase a user and every id joined to it (PostgreSQL and Faust tables)")
    def erase(user_key: UserKey) -> dict:
        return erase_user(settings, engine, user_key, actor="api")

    @app.get("/users/{user_key}/export", dependencies=auth, response_model=None,
             summary="Everything held about the person an id belongs to, as one JSON document (right of access)",
             description="Streamed: subject (ids, generated_at), tables {name: rows}, derived, not_included "
                         "(docs/privacy.md#export-right-of-access). 404 when nothing is held about the id, "
                         "400 for a malformed id or a placeholder id that is many shoppers'.",
             responses={200: {"content": {"application/json": {}}}, 400: {"description": "id refused"},
                        404: {"description": "nothing is held about the id"}})
    def export_user(user_key: UserKey):
        from fastapi.responses import StreamingResponse

        from spoor.privacy.export import UnknownSubject, stream_export
        try:
            pieces = stream_export(engine, user_key, denylist=settings.identity_denylist)
        except UnknownSubject as err:
            raise HTTPException(404, "nothing is held about this id") from err
        return StreamingResponse(pieces, media_type="application/json", headers={
            "Content-Disposition": 'attachment; filename="export.json"', "Cache-Control": "no-store"})

    app.include_router(attribution_router(engine, clock), dependencies=auth)  # GET /v1/attribution
    app.include_router(campaign_experiment_router(engine), dependencies=auth)  # GET /campaigns/{name}/experiment
    # Recommendations (docs/recommendations.md#serving): the admin token or a key of scope "recommendations".
    # Answered from ServedLists' memory, JSON already made (the response models document it): no database,
    # no thread; only k over STORED_K (or before the first load) is worked out, in a thread. What the
    # memory answers, RecommendationFastPath sends before FastAPI's routing; these routes answer the same.
    reader = [Depends(recommendation_reader)]
    service = RecommendationService(engine)
    app.router.add_event_handler("startup", served.start)
    app.router.add_event_handler("shutdown", served.stop)
    app.state.served_lists = served

    @app.get("/v1/recommendations/users/{user_key}", dependencies=reader, response_model=UserRecommendations,
             tags=["recommendations"], summary="A user's top k products (an unknown user gets the fallback)")
    async def recommend_for_user(user_key: UserKey, k: TopK = 10) -> Response:
        body = served.user(user_key, k)
        if body is None:
            body = orjson.dumps(await run_in_threadpool(service.for_user, user_key, k))
        return Response(body, media_type="application/json")

    @app.get("/v1/recommendations/products/{product_id}", dependencies=reader,
             response_model=ProductRecommendations, tags=["recommendations"],
             summary="Products seen or bought with a product (customers also bought)")
    async def recommend_for_product(product_id: ProductId, k: TopK = 10) -> Response:
        body = served.product(product_id, k)
        if body is None:
            body = orjson.dumps(await run_in_threadpool(service.for_product, product_id, k))
        return Response(body, media_type="application/json")

    return app


def api_from_environment() -> FastAPI:
    """The API as ``spoor segments api`` serves it, in each of its worker processes."""
    from sqlalchemy import create_engine
    settings = Settings()
    return create_api(settings, create_engine(settings.database_url, pool_pre_ping=True))


class AdminGuard:
    """ASGI middleware in front of the API: the bearer token is checked from the headers before any of
    the body is read (FastAPI reads a route's body before its dependencies run), then the body is read
    whole, at most ``max_body_bytes`` of it, and handed to the app. A request whose Content-Length is
    larger, or whose (chunked) body grows past the limit, is answered 413 without reading further."""

    def __init__(self, app, token: str, max_body_bytes: int, open_paths: frozenset[str], api_keys: ApiKeyCache):
        self.app = app
        self.token = token.encode()
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths
        self.api_keys = api_keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        if scope["path"] not in self.open_paths:
            principal = await self._principal(headers.get("authorization", b""))
            if principal is None:
                return await _answer(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
            if principal is not ADMIN and not _allowed(principal.scope, scope["method"], scope["path"]):
                return await _answer(send, 403, f"this key (scope {principal.scope}) may only call "
                                                f"{SCOPE_ROUTES[principal.scope][2]}")
            scope.setdefault("state", {})["principal"] = principal
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _answer(send, 413, f"body over {self.max_body_bytes} bytes")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return await _answer(send, 413, f"body over {self.max_body_bytes} bytes")
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _principal(self, authorization: bytes) -> Principal | None:
        """ADMIN for the admin token, the key's principal for an active API key, else None."""
        scheme, _, credentials = authorization.partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials:
            return None
        if hmac.compare_digest(credentials, self.token):
            return ADMIN
        if not self.api_keys.fresh():
            await run_in_threadpool(self.api_keys.refresh)
        return self.api_keys.lookup(credentials.decode("latin-1"))


class RecommendationFastPath:
    """ASGI middleware inside AdminGuard: a GET of a recommendation route that ``ServedLists`` answers from
    memory (the path's id within the route's bounds, and no query or ``k=1..STORED_K``) is sent from here,
    without FastAPI's routing, validation and dependencies (most of a request's CPU once the answer is in
    memory). Anything else goes on to the routes, which answer the same and document both in the OpenAPI."""

    PATH = re.compile(r"/v1/recommendations/(users|products)/([^/]+)")

    def __init__(self, app, served: ServedLists):
        self.app = app
        self.served = served

    async def __call__(self, scope, receive, send):
        body = self._answer(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if body is None:
            return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, scope) -> bytes | None:
        match = self.PATH.fullmatch(scope["path"])
        if match is None:
            return None
        query = scope["query_string"]
        if not query:
            k = 10
        elif query.startswith(b"k=") and query[2:].isdigit() and len(query) <= 5:
            k = int(query[2:])
        else:
            return None  # the route parses and checks it
        route, key = match.groups()
        if k < 1 or len(key) > 256 or "\x00" in key:
            return None  # the route's 422
        return self.served.user(key, k) if route == "users" else self.served.product(key, k)


def _allowed(scope_name: str, method: str, path: str) -> bool:
    allowed_method, pattern, _ = SCOPE_ROUTES.get(scope_name, (None, None, None))
    return method == allowed_method and pattern.fullmatch(path) is not None


async def _answer(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    # Connection: close, as the rest of the request's body is left unread.
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def resolve_user(engine: Engine, any_id: str) -> str:
    """The key of the user ``any_id`` belongs to (``any_id`` itself when it was merged into no one)."""
    with engine.connect() as conn:
        return canonical_key(conn, any_id) or any_id


def user_view(engine: Engine, any_id: str) -> dict:
    """The one profile of the user ``any_id`` belongs to (any of their ids finds it), with their ids."""
    from spoor.storage.segment_tables import UserConsent
    with engine.connect() as conn:
        user_key = canonical_key(conn, any_id) or any_id
        profile = conn.execute(select(UserProfile.__table__).where(UserProfile.user_key == user_key)).first()
        activity = conn.execute(select(UserActivity.__table__).where(UserActivity.user_key == user_key)).first()
        consent = conn.execute(select(UserConsent.__table__).where(UserConsent.user_key == user_key)).first()
        ids = ids_of(conn, user_key)
    if profile is None and consent is None:
        raise HTTPException(404, "no such user")
    return {"user_key": user_key, "looked_up_by": any_id, "ids": ids,
            "profile": dict(profile._mapping) if profile else None,
            "activity": dict(activity._mapping) if activity else None,
            "consent": dict(consent._mapping) if consent else None,
            "segments": membership.user_segments(engine, user_key),
            "campaigns": campaign_dispatch.user_history(engine, user_key)}
