"""Segment's short paths and settings document on a real collector and worker (issue 19).

/v1/t, /v1/p, /v1/i, /v1/s, /v1/g, /v1/a and /v1/b are the long paths under other names: the same
answers, limits, rate limits, CORS and dead letters, with metrics under the long name. Bodies are
JSON whatever the Content-Type, the write key in the body, basic auth or a bearer token, gzip or not.
GET /v1/projects/{writeKey}/settings answers the document Segment's libraries read at start.
"""

import gzip
import json
import re

import httpx
import pytest
from sqlalchemy import text

from spoor.storage.write_key_origins import set_origins
from spoor.storage.write_keys import create_key, revoke_key
from tests.support.local_stack import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SHOP = "https://shop.example"
OTHER_SHOP = "https://other-shop.example"
TEXT_PLAIN = {"Content-Type": "text/plain"}


@pytest.fixture(scope="module")
def keys(engine):
    shop = create_key(engine, "shop", "web")
    set_origins(engine, "shop", [SHOP])
    other = create_key(engine, "other", "web")
    set_origins(engine, "other", [OTHER_SHOP])
    return {"shop": shop, "other": other, "server": create_key(engine, "server", "server"),
            "limited": create_key(engine, "limited", "web"), "revoked": create_key(engine, "revoked", "web")}


@pytest.fixture(scope="module")
def url(start_process, test_settings, keys):
    # Small limits so each is cheap to reach; a bucket of 20 events per key refilled at 2/s.
    start_process("collector", max_batch_events=5, max_body_bytes=16 * 1024, max_event_bytes=4096,
                  rate_limit_events_per_s=2.0, rate_limit_burst_events=20, write_key_refresh_s=1.0)
    start_process("worker")
    return f"http://127.0.0.1:{test_settings.collector_port}"


def rows(engine, prefix: str) -> dict[str, dict]:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM events WHERE event_id LIKE :p"), {"p": prefix + "%"})
        return {r.event_id: dict(r._mapping) for r in found}


def dead_letter(engine, message_id: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM dead_letters WHERE payload->>'messageId' = :m"),
                           {"m": message_id}).first()
        return dict(row._mapping) if row else None


def requests_counted(url: str) -> dict[tuple[str, str], float]:
    metrics = httpx.get(f"{url}/metrics").text
    return {(m[1], m[2]): float(m[3]) for m in re.finditer(
        r'^spoor_collector_requests_total\{endpoint="([^"]+)",status="(\d+)"\} ([0-9.e+]+)$', metrics, re.M)}


def test_each_short_path_takes_one_message_of_its_type_as_text_plain(url, keys, engine):
    before = requests_counted(url)
    messages = {
        "t": {"event": "Product Viewed", "properties": {"product_id": "P1", "price": 3}},
        "p": {"name": "Home", "properties": {"url": "https://shop.example/"}},
        "i": {"traits": {"plan": "gold"}},
        "s": {"name": "Cart"},
        "g": {"groupId": "g1"},
        "a": {"previousId": "sp-anon"},
    }
    for short, message in messages.items():
        # analytics-next's request: text/plain, the key in the body (and as basic auth; see below).
        body = {**message, "userId": "sp-user", "messageId": f"sp-{short}", "writeKey": keys["shop"],
                "sentAt": "2026-01-01T00:00:00.000Z", "timestamp": "2026-01-01T00:00:00.000Z"}
        response = httpx.post(f"{url}/v1/{short}", content=json.dumps(body), headers=TEXT_PLAIN)
        assert (response.status_code, response.json()) == (200, {"success": True}), short

    got = wait_until(lambda: (r := rows(engine, "sp-")) and len(r) == 6 and r, 60, "six short-path events")
    assert {event_id: (row["name"], row["kind"]) for event_id, row in got.items()} == {
        "sp-t": ("Product Viewed", "product_view"), "sp-p": ("Home", "page_view"), "sp-i": ("identify", "identify"),
        "sp-s": ("Cart", "page_view"), "sp-g": ("group", "custom"), "sp-a": ("alias", "custom")}
    assert {row["source"] for row in got.values()} == {"web"}

    # Metrics name the long path; no series for a short one.
    after = requests_counted(url)
    for long in ("track", "page", "identify", "screen", "group", "alias"):
        assert after[(long, "200")] - before.get((long, "200"), 0) == 1, long
    assert not {endpoint for endpoint, _ in after} & {"t", "p", "i", "s", "g", "a", "b"}


def test_b_is_the_batch_path_with_each_way_of_sending_the_key(url, keys, engine):
    def batch(tag: str) -> dict:
        return {"batch": [{"type": "track", "event": "Product Added", "userId": "sp-b", "messageId": f"spb-{tag}",
                           "properties": {"product_id": "P2", "price": 4.5, "quantity": 1}}],
                "sentAt": "2026-01-01T00:00:00Z"}

    # analytics-kotlin and -swift: gzipped, text/plain, key in the body; analytics-next batching: both.
    sends = {
        "body-gzip": dict(content=gzip.compress(json.dumps({**batch("body-gzip"), "writeKey": keys["shop"]}).encode()),
                          headers={**TEXT_PLAIN, "Content-Encoding": "gzip"}),
        "basic": dict(content=json.dumps(batch("basic")), headers=TEXT_PLAIN, auth=(keys["shop"], "")),
        "bearer": dict(content=json.dumps(batch("bearer")),
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {keys['shop']}"}),
        "no-type": dict(content=json.dumps({**batch("no-type"), "writeKey": keys["shop"]}).encode(), headers={}),
    }
    for tag, request in sends.items():
        response = httpx.post(f"{url}/v1/b", **request)
        assert (response.status_code, response.json()) == (200, {"success": True}), tag
    got = wait_until(lambda: (r := rows(engine, "spb-")) and len(r) == 4 and r, 60, "four batches")
    assert {row["kind"] for row in got.values()} == {"cart_add"}

    for bad in ({"writeKey": "nope"}, {}, {"writeKey": keys["revoked"] + "x"}):
        response = httpx.post(f"{url}/v1/b", content=json.dumps({**batch("bad"), **bad}), headers=TEXT_PLAIN)
        assert response.status_code == 401
    assert httpx.post(f"{url}/v1/t", headers={"Authorization": "Bearer nope", **TEXT_PLAIN},
                      content=json.dumps({"userId": "x", "event": "E"})).status_code == 401


def test_short_paths_have_the_long_paths_limits_and_dead_letters(url, keys, engine):
    key = keys["shop"]
    too_long = httpx.post(f"{url}/v1/b", headers=TEXT_PLAIN, content=json.dumps(
        {"writeKey": key, "batch": [{"type": "track", "userId": "l", "event": "X"}] * 6}))
    assert (too_long.status_code, too_long.json()["error"]) == (413, "a batch holds at most 5 messages")
    too_big = httpx.post(f"{url}/v1/t", headers=TEXT_PLAIN, content=json.dumps(
        {"writeKey": key, "userId": "l", "event": "X", "pad": "x" * 17000}))
    assert too_big.status_code == 413
    bomb = gzip.compress(b'{"pad": "' + b"x" * 100_000 + b'"}')
    assert httpx.post(f"{url}/v1/i", content=bomb, headers={"Content-Encoding": "gzip"}).status_code == 413
    assert httpx.post(f"{url}/v1/p", content=b"not json", headers=TEXT_PLAIN).status_code == 400

    # An invalid message on a short path: 400 naming it, dead-lettered with its payload and the long name.
    invalid = httpx.post(f"{url}/v1/t", headers=TEXT_PLAIN, content=json.dumps(
        {"writeKey": key, "userId": "l", "messageId": "sp-invalid", "properties": {}}))
    assert invalid.status_code == 400
    assert invalid.json()["rejected"] == [
        {"index": 0, "field": "event", "reason": "a track message needs an event name"}]
    stored = wait_until(lambda: dead_letter(engine, "sp-invalid"), 60, "the dead letter")
    assert stored["processor"] == "collector" and stored["field"] == "event"
    assert stored["request"]["endpoint"] == "track"

    # The rate limit counts events per key whichever path they take.
    limited = keys["limited"]
    answers = [httpx.post(f"{url}/v1/b", headers=TEXT_PLAIN, content=json.dumps(
        {"writeKey": limited, "batch": [{"type": "track", "userId": "rl", "event": "X"}] * 5})) for _ in range(6)]
    throttled = [a for a in answers if a.status_code == 429]
    assert throttled and all(int(a.headers["retry-after"]) >= 1 for a in throttled)


def test_browser_requests_on_short_paths_get_the_same_cors(url, keys):
    # analytics-next sends Authorization (and X-Retry-Count on a retry): a preflight first.
    preflight = httpx.options(f"{url}/v1/t", headers={
        "Origin": SHOP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-retry-count"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == SHOP
    message = json.dumps({"writeKey": keys["shop"], "userId": "c", "event": "CORS"})
    allowed = httpx.post(f"{url}/v1/t", content=message, headers={**TEXT_PLAIN, "Origin": SHOP})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == SHOP
    other_key = httpx.post(f"{url}/v1/t", content=message, headers={**TEXT_PLAIN, "Origin": OTHER_SHOP})
    assert other_key.status_code == 403 and "not allowed for this write key" in other_key.json()["error"]
    stranger = httpx.post(f"{url}/v1/b", content=message, headers={**TEXT_PLAIN, "Origin": "https://evil.example"})
    assert stranger.status_code == 403 and "access-control-allow-origin" not in stranger.headers


def test_settings_document_for_an_active_key(url, keys, test_settings):
    key = keys["shop"]
    response = httpx.get(f"{url}/v1/projects/{key}/settings")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "max-age" in response.headers["cache-control"]
    doc = response.json()
    segment = doc["integrations"]["Segment.io"]
    # apiHost: the Host the request came to, without a scheme, with /v1 (where the short paths are).
    assert (segment["apiKey"], segment["apiHost"], segment["protocol"]) == (
        key, f"127.0.0.1:{test_settings.collector_port}/v1", "http")
    assert list(doc["integrations"]) == ["Segment.io"]
    assert doc["plan"]["track"]["__default"] == {"enabled": True, "integrations": {}}
    assert doc["plan"]["identify"]["__default"] == {"enabled": True}
    assert (doc["edgeFunction"], doc["analyticsNextEnabled"], doc["metrics"]) == ({}, True, {"sampleRate": 0})
    for other in ("other", "server", "limited", "revoked"):  # no other key is named anywhere
        assert keys[other] not in response.text

    # A proxy's Host is what the client saw.
    proxied = httpx.get(f"{url}/v1/projects/{key}/settings", headers={"Host": "collect.your.shop"}).json()
    assert proxied["integrations"]["Segment.io"]["apiHost"] == "collect.your.shop/v1"
    assert httpx.post(f"{url}/v1/projects/{key}/settings").status_code == 405


def test_settings_of_unknown_and_revoked_keys_are_404(url, keys, engine):
    unknown = httpx.get(f"{url}/v1/projects/not-a-key/settings")
    assert (unknown.status_code, unknown.json()) == (404, {"success": False, "error": "unknown or revoked write key"})
    key = keys["revoked"]
    assert httpx.get(f"{url}/v1/projects/{key}/settings").status_code == 200
    revoke_key(engine, "revoked")
    wait_until(lambda: httpx.get(f"{url}/v1/projects/{key}/settings").status_code == 404, 15,
               "the revoked key's settings to go")
    assert httpx.get(f"{url}/v1/projects/{key}/settings", headers={"Origin": SHOP}).status_code == 404


def test_settings_are_readable_cross_origin_only_from_the_keys_origins(url, keys):
    key = keys["shop"]
    allowed = httpx.get(f"{url}/v1/projects/{key}/settings", headers={"Origin": SHOP})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == SHOP and allowed.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in allowed.headers
    # An origin of another key: refused, with the reason readable by that origin.
    other = httpx.get(f"{url}/v1/projects/{key}/settings", headers={"Origin": OTHER_SHOP})
    assert other.status_code == 403 and "not allowed for this write key" in other.json()["error"]
    # An origin no key allows: refused before the key is looked at, and not readable.
    stranger = httpx.get(f"{url}/v1/projects/{key}/settings", headers={"Origin": "https://evil.example"})
    assert stranger.status_code == 403 and "access-control-allow-origin" not in stranger.headers
    # A server-side key without origins: apps and servers (no Origin) read it; no browser does.
    assert httpx.get(f"{url}/v1/projects/{keys['server']}/settings").status_code == 200
    assert httpx.get(f"{url}/v1/projects/{keys['server']}/settings", headers={"Origin": SHOP}).status_code == 403


def test_public_url_setting_names_the_api_host(start_process, test_settings, keys):
    port = free_port()
    start_process("collector", collector_port=port, collector_public_url="https://collect.your.shop/spoor")
    doc = httpx.get(f"http://127.0.0.1:{port}/v1/projects/{keys['shop']}/settings").json()
    segment = doc["integrations"]["Segment.io"]
    assert (segment["apiHost"], segment["protocol"]) == ("collect.your.shop/spoor/v1", "https")
