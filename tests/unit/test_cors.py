"""CorsMiddleware and OriginPolicy without a database: the policy is loaded from a dict."""

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from spoor.ingest.cors import CorsMiddleware, OriginPolicy
from spoor.storage.write_keys import hash_key

SHOP = "https://shop.example"


@pytest.fixture
def policy():
    origins = {hash_key("browser-key"): frozenset({SHOP}), hash_key("server-key"): frozenset(),
               hash_key("any-key"): frozenset({"*"})}
    policy = OriginPolicy(lambda: origins, refresh_s=60)
    yield policy
    policy.close()


@pytest.fixture
def client(policy):
    async def batch(_request):
        return JSONResponse({"success": True}, headers={"Retry-After": "3"})

    app = Starlette(routes=[Route("/v1/batch", batch, methods=["POST"]), Route("/healthz", batch)],
                    middleware=[Middleware(CorsMiddleware, policy=lambda: policy)])
    return Client(app)


class Client:
    """Requests straight into the ASGI app, no server."""

    def __init__(self, app):
        self.transport = httpx.ASGITransport(app=app)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        async def send():
            async with httpx.AsyncClient(transport=self.transport, base_url="http://collector") as client:
                return await client.request(method, path, **kwargs)
        return asyncio.run(send())

    def options(self, path, **kwargs):
        return self.request("OPTIONS", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)


def test_denial_per_key(policy):
    assert policy.denial(None, "server-key") is None  # not a browser
    assert policy.denial(SHOP, "browser-key") is None
    assert policy.denial("https://anything.example", "any-key") is None
    assert "not allowed for this write key" in policy.denial(SHOP, "server-key")
    assert "not allowed for this write key" in policy.denial("https://other.example", "browser-key")


def test_a_wildcard_on_one_key_lets_every_origin_through_the_middleware(policy):
    assert policy.allowed_by_some_key("https://anything.example")


def test_preflight_allowed(client):
    response = client.options("/v1/batch", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "Content-Type"})
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == SHOP
    assert response.content == b""


def test_actual_request_is_labelled_and_exposes_retry_after(client):
    response = client.post("/v1/batch", headers={"Origin": SHOP})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP
    assert response.headers["access-control-expose-headers"] == "Retry-After"
    assert response.headers["vary"] == "Origin"


def test_requests_without_origin_and_other_paths_pass_untouched(client):
    assert "access-control-allow-origin" not in client.post("/v1/batch").headers
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": SHOP}).headers


def test_a_refresh_that_fails_keeps_the_last_origins():
    calls = {"n": 0}

    def load():
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("database away")
        return {hash_key("k"): frozenset({SHOP})}

    policy = OriginPolicy(load, refresh_s=0.01)
    try:
        deadline = time.monotonic() + 5
        while calls["n"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls["n"] >= 3
        assert policy.denial(SHOP, "k") is None
    finally:
        policy.close()
