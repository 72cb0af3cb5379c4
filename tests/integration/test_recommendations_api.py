"""The recommendation routes of the admin API on the real PostgreSQL (in-process ASGI client), answering
the lists the segments runner made (``make_lists``) from memory: the admin token and a reader key (scope
recommendations) are accepted there, the reader key nowhere else, a revoked key within seconds; hostile k
and ids get a 4xx with the reason; an unknown user gets the fallback; an opted-out or erased user gets no
personal list once the runner's pass and the API's refresh have run. `spoor keys create-reader / list /
revoke --reader` too."""

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from spoor.cli.admin_api import create_api
from spoor.privacy.consent import set_consent
from spoor.storage import api_keys
from spoor.storage.api_keys import ApiKeyCache
from spoor.storage.recommendation_reads import STORED_K, CachedReads, ProductCache, make_lists
from spoor.storage.recommendations import DatabaseReads, for_product, for_user
from tests.support.local_stack import REPO, SpoorProcess, wait_until

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
REFRESH_S = 0.3
# Weights are forward-decayed log2 weights (stream_processors/interests.py): only differences matter.
INTERESTS = [("ann", "product", "P1", 10.0), ("ann", "category", "mugs", 10.0), ("ann", "bought", "P1", 9.0),
             ("ben", "product", "P3", 10.0), ("cy", "product", "P1", 10.0), ("dee", "product", "P1", 10.0)]
POPULARITY = [("P1", "mugs", 12.0, 12.0), ("P2", "mugs", 11.0, 9.0), ("P3", "mugs", 10.0, 11.0),
              ("P4", "lamps", 9.0, 13.0), ("P5", "lamps", 8.0, 8.0)]
AFFINITY = [("P1", "P2", 10.0, 10.0), ("P2", "P1", 10.0, 10.0), ("P1", "P3", 9.0, None), ("P3", "P1", 9.0, None)]


@pytest.fixture(scope="module")
def data(engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO user_interests (user_key, facet, value, weight) VALUES (:u, :f, :v, :w)"),
                     [dict(zip("ufvw", row)) for row in INTERESTS])
        conn.execute(text("INSERT INTO product_popularity (product_id, category, weight, trend) "
                          "VALUES (:p, :c, :w, :t)"), [dict(zip("pcwt", row)) for row in POPULARITY])
        conn.execute(text("INSERT INTO product_affinity (product_id, neighbour_id, weight, bought) "
                          "VALUES (:p, :n, :w, :b)"), [dict(zip("pnwb", row)) for row in AFFINITY])


@pytest.fixture(scope="module")
def keys(engine) -> ApiKeyCache:
    return ApiKeyCache(engine, refresh_s=REFRESH_S)


@pytest.fixture(scope="module")
def reader(engine) -> str:
    return api_keys.create_key(engine, "shop-backend", "recommendations")


@pytest.fixture(scope="module")
def client(test_settings, engine, keys, data):
    settings = test_settings.model_copy(update={"admin_token": TOKEN, "campaign_webhook_secret": "s"})
    make_lists(engine, [], EPOCH)  # the segments runner's pass: every user's and product's list
    with TestClient(create_api(settings, engine, clock=lambda: NOW, api_keys=keys),
                    raise_server_exceptions=False) as client:
        yield client


def admin(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_both_routes_with_the_admin_token_and_a_reader_key(client, reader, engine):
    for headers in (admin(), admin(reader)):
        user = client.get("/v1/recommendations/users/ann", params={"k": 3}, headers=headers)
        assert user.status_code == 200, user.text
        # storage/recommendations.py's scoring on the rows above: ann's one seed P1 (1.0); similarity(P1, q) =
        # 2^(together - (popularity(P1) + popularity(q)) / 2); buy again = 4 x ann's purchases relative to the
        # most bought (P1: 1); each score times 2^(0.5 (popularity(q) - 12)), 12 the most popular candidate's.
        demand = {p: 2.0 ** (0.5 * (weight - 12.0)) for p, _category, weight, _trend in POPULARITY}
        assert user.json() == {"user_key": "ann", "personal": True, "items": [
            {"product_id": "P1", "score": pytest.approx(4.0 * demand["P1"], abs=1e-9), "reason": "buy again"},
            {"product_id": "P2", "score": pytest.approx(2.0 ** (10 - (12 + 11) / 2) * demand["P2"], abs=1e-9),
             "reason": "bought with P1"},
            {"product_id": "P3", "score": pytest.approx(2.0 ** (9 - (12 + 10) / 2) * demand["P3"], abs=1e-9),
             "reason": "viewed with P1"}]}
        product = client.get("/v1/recommendations/products/P1", headers=headers).json()
        assert [(i["product_id"], i["reason"]) for i in product["items"]] == [
            ("P2", "bought with P1"), ("P3", "viewed with P1"), ("P4", "trending now"), ("P5", "trending now")]
    # The routes answer what storage/recommendations.py answers, from memory (k <= STORED_K) or worked out.
    with engine.connect() as conn:
        assert client.get("/v1/recommendations/users/ben", headers=admin()).json() == for_user(conn, "ben")
        assert client.get("/v1/recommendations/products/P3?k=2", headers=admin()).json() == for_product(conn, "P3", 2)
        for k in (STORED_K, STORED_K + 1):
            assert client.get(f"/v1/recommendations/users/ann?k={k}", headers=admin()).json() == for_user(conn, "ann", k)
            assert client.get(f"/v1/recommendations/products/P1?k={k}", headers=admin()).json() == for_product(
                conn, "P1", k)
    default = client.get("/v1/recommendations/users/ben", headers=admin(reader)).json()
    assert len(default["items"]) == 5  # k=10, but only five products exist


def test_the_fast_path_answers_what_the_routes_answer_after_the_same_checks(client, reader):
    """What the memory answers is sent by RecommendationFastPath before FastAPI's routing: byte for byte the
    routes' answer (a query it does not take, like ``&x=1``, goes to the route), behind the same guard."""
    for path in ("/v1/recommendations/users/ann", "/v1/recommendations/users/never-seen",
                 "/v1/recommendations/users/%F0%9F%92%A9", "/v1/recommendations/products/P1",
                 "/v1/recommendations/products/NOPE"):
        for query in ("", "?k=1", "?k=3", f"?k={STORED_K}"):
            fast = client.get(path + query, headers=admin(reader))
            route = client.get(path + (query + "&x=1" if query else "?x=1"), headers=admin(reader))
            assert fast.status_code == route.status_code == 200
            assert fast.content == route.content and fast.headers["content-type"] == route.headers["content-type"]
        for headers in ({}, admin("wrong-token"), {"Authorization": reader}):
            assert client.get(path, headers=headers).status_code == 401


def test_openapi_documents_the_routes_with_examples(client):
    spec = client.get("/openapi.json").json()
    for path, model in (("/v1/recommendations/users/{user_key}", "UserRecommendations"),
                        ("/v1/recommendations/products/{product_id}", "ProductRecommendations")):
        operation = spec["paths"][path]["get"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(model)
        k = next(p for p in operation["parameters"] if p["name"] == "k")
        assert (k["schema"]["minimum"], k["schema"]["maximum"], k["schema"]["default"]) == (1, 100, 10)
        assert operation["security"] == [{"HTTPBearer": []}]
        assert spec["components"]["schemas"][model]["examples"][0]["items"]


def test_the_reader_key_reads_recommendations_only(client, reader):
    refused = [("GET", "/segments"), ("GET", "/fields"), ("GET", "/campaigns"), ("GET", "/users/ann"),
               ("DELETE", "/users/ann"), ("PUT", "/segments/x"), ("POST", "/segments/preview"),
               ("PUT", "/users/ann/consent"), ("POST", "/v1/recommendations/users/ann"),
               ("GET", "/v1/recommendations/users/ann/extra"), ("GET", "/v1/recommendations")]
    for method, path in refused:
        answer = client.request(method, path, headers=admin(reader), json={"where": "orders > 1"})
        assert answer.status_code == 403, (method, path, answer.status_code)
        assert "may only call GET /v1/recommendations/users/{user_key}" in answer.json()["detail"]
    assert client.get("/v1/recommendations/users/ann", headers=admin("spr_wrong")).status_code == 401
    assert client.get("/v1/recommendations/users/ann").status_code == 401
    assert client.get("/v1/recommendations/users/ann", headers={"Authorization": f"Basic {reader}"}).status_code == 401
    assert client.get("/segments", headers=admin("spr_wrong")).status_code == 401
    assert client.get("/segments", headers=admin()).status_code == 200  # the admin token: everything
    assert client.get("/healthz").status_code == 200


def test_a_revoked_key_is_refused_within_seconds(client, engine):
    key = api_keys.create_key(engine, "revoked-soon", "recommendations")
    wait_until(lambda: client.get("/v1/recommendations/users/ann", headers=admin(key)).status_code == 200,
               5, "the new key to be accepted")
    assert api_keys.revoke_key(engine, "revoked-soon") and not api_keys.revoke_key(engine, "revoked-soon")
    revoked_at = time.monotonic()
    wait_until(lambda: client.get("/v1/recommendations/users/ann", headers=admin(key)).status_code == 401,
               5, "the revoked key to be refused")
    assert time.monotonic() - revoked_at < REFRESH_S + 1.0
    with pytest.raises(ValueError, match="already exists"):
        api_keys.create_key(engine, "revoked-soon", "recommendations", key)
    with pytest.raises(ValueError, match="unknown scope"):
        api_keys.create_key(engine, "admin-ish", "admin")


@pytest.mark.parametrize("k", ["0", "-1", "101", str(10 ** 9), "1e3", "abc", "", "9" * 40])
def test_k_out_of_bounds_is_a_422_naming_k(client, k):
    for path in ("/v1/recommendations/users/ann", "/v1/recommendations/products/P1"):
        answer = client.get(path, params={"k": k}, headers=admin())
        assert answer.status_code == 422, (path, k, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["query", "k"]


@pytest.mark.parametrize("value, statuses", [
    ("x" * 257, {422}), ("%00", {422}), ("a%00b", {422}), ("..%2F..%2Fsegments", {404}), ("..", {404}),
    ("%2e%2e%2fsegments", {404}), ("%F0%9F%92%A9", {200}), ("%C3%BCn%C3%AF", {200}), ("%E2%80%AE", {200}),
    ("a%20b", {200}), ("-1", {200}), ("9" * 40, {200}), ("%ED%A0%80", {200, 400, 404, 422}),
    ("%FF", {200, 400, 404, 422})])
def test_hostile_ids_get_a_clear_4xx_or_the_fallback(client, reader, value, statuses):
    for route in ("users", "products"):
        answer = client.get(f"/v1/recommendations/{route}/{value}", headers=admin())
        assert answer.status_code in statuses, (route, value, answer.status_code, answer.text)
        if answer.status_code == 200:
            assert answer.json()["items"] and answer.json().get("personal") in (False, None)
        # The reader key never reaches another route by a path that walks out of its own.
        by_reader = client.get(f"/v1/recommendations/{route}/{value}", headers=admin(reader))
        assert by_reader.status_code in statuses | {403}, (route, value, by_reader.status_code)
        assert not isinstance(by_reader.json(), list)  # /segments answers a list
    assert client.get("/v1/recommendations/users/ann", headers=admin()).status_code == 200  # still answering


def test_an_unknown_user_gets_the_fallback(client, reader):
    answer = client.get("/v1/recommendations/users/never-seen", params={"k": 3}, headers=admin(reader))
    assert answer.status_code == 200
    assert answer.json() == {"user_key": "never-seen", "personal": False, "items": [
        {"product_id": "P4", "score": 0.0005, "reason": "trending now"},
        {"product_id": "P1", "score": 0.00025, "reason": "trending now"},
        {"product_id": "P3", "score": 0.000166667, "reason": "trending now"}]}
    unknown_product = client.get("/v1/recommendations/products/NOPE", params={"k": 2}, headers=admin(reader)).json()
    assert [i["reason"] for i in unknown_product["items"]] == ["trending now", "trending now"]


def test_opted_out_and_erased_users_get_no_personal_list(client, reader, test_settings, engine):
    def cy() -> dict:
        return client.get("/v1/recommendations/users/cy", headers=admin(reader)).json()

    before = cy()
    assert before["personal"] is True and before["items"][0]["reason"] == "bought with P1"
    for opted_out in (True, False):
        since = datetime.now(timezone.utc) - timedelta(seconds=1)
        set_consent(engine, "cy", opted_out, None)
        make_lists(engine, [], since)  # the runner's next pass
        wait_until(lambda: cy()["personal"] is not opted_out, 5, "cy's list to follow the consent")
        if opted_out:
            assert {i["reason"] for i in cy()["items"]} == {"trending now"}
    assert cy() == before

    assert client.get("/v1/recommendations/users/dee", headers=admin(reader)).json()["personal"] is True
    assert client.delete("/users/dee", headers=admin()).status_code == 200
    wait_until(lambda: client.get("/v1/recommendations/users/dee", headers=admin(reader)).json()["personal"] is False,
               5, "dee's list gone")
    erased = client.get("/v1/recommendations/users/dee", headers=admin(reader)).json()
    assert erased["personal"] is False and {i["reason"] for i in erased["items"]} == {"trending now"}


def test_the_product_cache_answers_as_the_database_does(engine):
    """Product-level reads served from a ``ProductCache`` equal ``DatabaseReads``', and expire after ``ttl_s``."""
    now = [0.0]
    cache = ProductCache(ttl_s=2.0, clock=lambda: now[0])
    with engine.connect() as conn:
        database = DatabaseReads(conn)
        direct = for_user(conn, "ann", 5), for_product(conn, "P1", 5), for_product(conn, "P3", 100)
        reads = (database.neighbours(["P1", "P3", "NOPE"], 50), database.ranked(None, 3),
                 database.ranked("mugs", 2), database.category_of("P5"), database.category_of("NOPE"))
        assert reads[0] and reads[3] == "lamps" and reads[4] is None
        for _ in range(2):
            assert (for_user(cache.reads(conn), "ann", 5), for_product(cache.reads(conn), "P1", 5),
                    for_product(cache.reads(conn), "P3", 100)) == direct
            cached = cache.reads(conn)
            assert isinstance(cached, CachedReads)
            assert (sorted(cached.neighbours(["P1", "P3", "NOPE"], 50)), cached.ranked(None, 3),
                    cached.ranked("mugs", 2), cached.category_of("P5"), cached.category_of("NOPE")) == (
                sorted(reads[0]),) + reads[1:]
        assert cache.hits > 0
        conn.execute(text("UPDATE product_affinity SET bought = NULL WHERE product_id = 'P1' AND neighbour_id = 'P2'"))
        conn.execute(text("UPDATE product_popularity SET category = 'mugs', trend = 99 WHERE product_id = 'P5'"))
        now[0] = 1.9  # within ttl: what was read is kept
        kept = cache.reads(conn)
        assert for_product(kept, "P1", 1)["items"][0]["reason"] == "bought with P1"
        assert (kept.category_of("P5"), kept.ranked(None, 1), kept.ranked("mugs", 3)) == (
            "lamps", ["P4"], ["P1", "P2", "P3"])
        now[0] = 2.5  # past it: read again
        fresh = cache.reads(conn)
        assert for_product(fresh, "P1", 1)["items"][0]["reason"] == "viewed with P1"
        assert (fresh.category_of("P5"), fresh.ranked(None, 1), fresh.ranked("mugs", 4)) == (
            "mugs", ["P5"], ["P1", "P2", "P3", "P5"])
        assert (fresh.neighbours(["P1"], 50), fresh.ranked("mugs", 4)) == (
            DatabaseReads(conn).neighbours(["P1"], 50), DatabaseReads(conn).ranked("mugs", 4))
        conn.rollback()


def spoor(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spoor.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=SpoorProcess("keys", settings, REPO).env(), timeout=60)


def test_keys_commands_create_list_and_revoke_reader_keys(test_settings, engine):
    created = spoor(test_settings, "keys", "create-reader", "storefront")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("spr_") and len(key) > 40
    assert api_keys.ApiKeyCache(engine).lookup(key) is None  # nothing read yet
    cache = api_keys.ApiKeyCache(engine)
    cache.refresh()
    assert cache.lookup(key) == api_keys.Principal("storefront", "recommendations")
    again = spoor(test_settings, "keys", "create-reader", "storefront")
    assert again.returncode == 1 and "already exists" in again.stderr
    short = spoor(test_settings, "keys", "create-reader", "fixed", "--key", "short")
    assert short.returncode == 1 and "16 printable ASCII" in short.stderr
    listed = spoor(test_settings, "keys", "list").stdout
    assert any(line.split()[:3] == ["storefront", "reader", "active"] and line.endswith("scope recommendations")
               for line in listed.splitlines()), listed
    assert key not in listed
    wrong_kind = spoor(test_settings, "keys", "revoke", "storefront")
    assert wrong_kind.returncode == 1 and "--reader" in wrong_kind.stderr
    assert spoor(test_settings, "keys", "revoke", "--reader", "storefront").returncode == 0
    assert spoor(test_settings, "keys", "revoke", "--reader", "storefront").returncode == 1
    assert "revoked" in next(line for line in spoor(test_settings, "keys", "list").stdout.splitlines()
                             if line.startswith("storefront"))
    cache.expires = float("-inf")
    cache.refresh()
    assert cache.lookup(key) is None
