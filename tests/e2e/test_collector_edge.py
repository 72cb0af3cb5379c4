"""The hardened collector on the real stack: sources, limits, edge enrichment, dead letters and their replay."""

import os
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import text

from spoor.settings import environment
from spoor.storage.write_keys import create_key
from tests.support.local_stack import REPO, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.1 Mobile/15E148 Safari/604.1")
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
MAX_EVENT_BYTES = 2048


@pytest.fixture(scope="module")
def edge(start_process, test_settings, engine, write_key):
    """A collector with small limits (so each can be hit cheaply) and a worker."""
    start_process("collector", max_event_bytes=MAX_EVENT_BYTES, max_batch_events=20, max_body_bytes=16 * 1024)
    start_process("worker")
    return f"http://127.0.0.1:{test_settings.collector_port}"


def event_row(engine, event_id: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM events WHERE event_id = :id"), {"id": event_id}).first()
        return dict(row._mapping) if row else None


def dead_letters(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM dead_letters ORDER BY received_at, id"))]


def spoor(settings, *args: str, **overrides) -> subprocess.CompletedProcess:
    env = {**os.environ, **environment(settings),
           **{f"SPOOR_{k.upper()}": str(v) for k, v in overrides.items()}}
    done = subprocess.run([sys.executable, "-m", "spoor.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"spoor {' '.join(args)} failed:\n{done.stderr}"
    return done


def test_each_event_records_its_key_source_and_edge_enrichment(edge, engine, write_key):
    ios_key = create_key(engine, "ios-app", "ios")
    wait_until(lambda: httpx.post(f"{edge}/v1/track", auth=(ios_key, ""),
                                  json={"userId": "probe", "event": "X"}).status_code == 200,
               30, "the collector to pick up the new key")
    batch = {"batch": [
        # The message's own context wins: a Segment library relaying a browser's agent and IP.
        {"type": "track", "userId": "e1", "event": "Product Viewed", "messageId": "edge-ctx",
         "context": {"userAgent": IPHONE, "ip": "198.51.100.77"}},
        # Otherwise the request's User-Agent header and client address (here through X-Forwarded-For
        # from a local proxy, which uvicorn trusts by default).
        {"type": "page", "userId": "e1", "name": "Home", "messageId": "edge-hdr"},
    ]}
    response = httpx.post(f"{edge}/v1/batch", json=batch, auth=(write_key, ""),
                          headers={"User-Agent": FIREFOX, "X-Forwarded-For": "2001:db8:abcd:12:34:56:78:9a"})
    assert response.status_code == 200
    bot = httpx.post(f"{edge}/v1/track", auth=(ios_key, ""), headers={"User-Agent": BINGBOT},
                     json={"userId": "crawler", "event": "Product Viewed", "messageId": "edge-bot"})
    assert bot.status_code == 200

    wait_until(lambda: event_row(engine, "edge-bot") and event_row(engine, "edge-hdr"), 60, "enriched events")
    ctx, hdr, crawler = event_row(engine, "edge-ctx"), event_row(engine, "edge-hdr"), event_row(engine, "edge-bot")
    assert {k: ctx[k] for k in ("source", "browser", "browser_version", "os", "os_version", "device",
                                "is_bot", "anonymized_ip")} == {
        "source": "web", "browser": "Mobile Safari", "browser_version": "17.1", "os": "iOS", "os_version": "17.1",
        "device": "iPhone", "is_bot": False, "anonymized_ip": "198.51.100.0"}
    assert (hdr["browser"], hdr["os"], hdr["is_bot"], hdr["anonymized_ip"]) == (
        "Firefox", "Linux", False, "2001:db8:abcd::")
    assert (crawler["source"], crawler["is_bot"], crawler["anonymized_ip"]) == ("ios", True, "127.0.0.0")
    # The raw addresses are nowhere in PostgreSQL.
    with engine.connect() as conn:
        dump = conn.execute(text("SELECT string_agg(t::text, ' ') FROM events t")).scalar()
    assert "198.51.100.77" not in dump and "2001:db8:abcd:12" not in dump


def test_every_limit_answers_a_clear_4xx(edge, write_key):
    client = httpx.Client(base_url=edge, auth=(write_key, ""), timeout=30)

    too_long = client.post("/v1/batch", json={"batch": [{"type": "track", "userId": "l", "event": "X"}] * 21})
    assert too_long.status_code == 413
    assert too_long.json()["error"] == "a batch holds at most 20 messages"

    body = b'{"batch": [], "pad": "' + b"x" * (16 * 1024) + b'"}'
    too_big = client.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["error"] == "the body may be at most 16384 bytes"

    fat = {"type": "track", "userId": "l", "event": "X", "messageId": "limit-fat",
           "properties": {"blob": "x" * MAX_EVENT_BYTES}}
    thin = {"type": "track", "userId": "l", "event": "X", "messageId": "limit-thin"}
    one_too_big = client.post("/v1/batch", json={"batch": [thin, fat]})
    assert one_too_big.status_code == 400
    assert one_too_big.json() == {"success": False, "accepted": 1, "rejected": [
        {"index": 1, "field": "$", "reason": f"an event may be at most {MAX_EVENT_BYTES} bytes"}]}

    assert client.post("/v1/batch", content=b"[1, 2", headers={"Content-Type": "application/json"}).status_code == 400
    assert client.post("/v1/batch", json={"batch": "nope"}).status_code == 400


def test_dead_letters_are_listed_and_replayed_after_a_fix(edge, engine, write_key, test_settings):
    """A size limit set too low rejects a real event; after raising it, replay accepts that one and
    dead-letters the still-invalid one again, with a count."""
    too_big = {"type": "track", "userId": "r1", "event": "Product Viewed", "messageId": "replay-big",
               "properties": {"product_id": "P1", "description": "y" * MAX_EVENT_BYTES}}
    broken = {"type": "track", "userId": "r1", "event": "Product Added", "messageId": "replay-broken",
              "properties": {"product_id": "P1", "price": "free"}}
    response = httpx.post(f"{edge}/v1/batch", json={"batch": [too_big, broken]}, auth=(write_key, ""),
                          headers={"User-Agent": FIREFOX})
    assert response.status_code == 400 and response.json()["accepted"] == 0

    def ours():
        rows = [d for d in dead_letters(engine) if d["payload"].get("messageId", "").startswith("replay-")]
        return rows if len(rows) == 2 else None

    rows = wait_until(ours, 60, "both dead letters in PostgreSQL")
    assert sorted((r["failure_type"], r["schema_version"], r["processor"]) for r in rows) == [
        ("schema_violation", 2, "collector"), ("size_violation", 2, "collector")]

    listed = spoor(test_settings, "dead-letters", "list", "--reason", "must be a number", "--since", "1h").stdout
    assert "properties.price: must be a number" in listed and "1 dead letters" in listed
    sized = spoor(test_settings, "dead-letters", "list", "--type", "size_violation", "--json").stdout.splitlines()
    assert "replay-big" in {__import__("json").loads(line)["payload"]["messageId"] for line in sized}
    assert "0 dead letters" in spoor(test_settings, "dead-letters", "list", "--since", "2099-01-01").stdout

    # The fix: a bigger event limit. Replay sees the payloads through the collector's own normalisation.
    pending = [d for d in dead_letters(engine) if d["processor"] == "collector" and d["replayed_at"] is None]
    out = spoor(test_settings, "dead-letters", "replay", "--processor", "collector", "--since", "1h",
                max_event_bytes=32 * 1024).stdout
    assert out.startswith(f"replayed {len(pending)} dead letters: {len(pending) - 1} accepted, "
                          "1 still invalid (new dead letters), 0 skipped")
    assert "properties.price: must be a number" in out

    wait_until(lambda: event_row(engine, "replay-big"), 60, "the replayed event in the events table")
    big = event_row(engine, "replay-big")
    assert (big["source"], big["browser"], big["received_at"]) == (
        "web", "Firefox", next(r["received_at"] for r in rows if r["failure_type"] == "size_violation"))
    assert event_row(engine, "replay-broken") is None

    def replayed_again():
        again = [d for d in dead_letters(engine) if d["replay_of"] in {r["id"] for r in rows}]
        return again or None

    again = wait_until(replayed_again, 60, "the still-invalid payload dead-lettered again")
    assert [(d["payload"]["messageId"], d["field"]) for d in again] == [("replay-broken", "properties.price")]
    assert all(d["replayed_at"] is not None for d in dead_letters(engine) if d["id"] in {r["id"] for r in rows})

    # Replayed dead letters are not replayed twice; the new one is pending.
    pending = spoor(test_settings, "dead-letters", "list", "--pending", "--reason", "must be a number").stdout
    assert "1 dead letters" in pending and "[pending]" in pending
    second = spoor(test_settings, "dead-letters", "replay", "--id", again[0]["id"]).stdout
    assert second.startswith("replayed 1 dead letters: 0 accepted, 1 still invalid")


def test_a_nul_character_is_a_400_and_its_dead_letter_is_stored(edge, engine, write_key):
    """PostgreSQL cannot store U+0000: the event is refused at the edge, its dead letter stored with U+FFFD."""
    body = b'{"batch": [{"type": "track", "userId": "nul\\u0000user", "event": "X", "messageId": "nul-1"}]}'
    response = httpx.post(f"{edge}/v1/batch", content=body, auth=(write_key, ""),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["rejected"] == [{"index": 0, "field": "$",
                                            "reason": "Value error, user_key may not contain the NUL character"}]

    def stored():
        return [d for d in dead_letters(engine) if d["payload"].get("messageId") == "nul-1"] or None

    assert wait_until(stored, 60, "the NUL event's dead letter")[0]["payload"]["userId"] == "nul\ufffduser"
    # The worker is still writing: a later event arrives.
    assert httpx.post(f"{edge}/v1/track", json={"userId": "after-nul", "event": "X", "messageId": "nul-2"},
                      auth=(write_key, "")).status_code == 200
    wait_until(lambda: event_row(engine, "nul-2"), 60, "an event after the NUL one")
