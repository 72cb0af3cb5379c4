"""Fuzzing the HTTP API with hypothesis against the real collector, Kafka, worker and PostgreSQL.

Whatever is sent, the collector answers without a 5xx and stays up; every event it accepted is
found in the events table, and every event it rejected in dead_letters (so no input can poison
the worker either). Bounded: a few hundred requests. And one batch of hand-picked hostile
messages among valid ones (issue 18): a 400 naming exactly those, the valid events on the events
topic, each rejection on the dead-letter topic with its reason.
"""

import base64
import gzip
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer
from sqlalchemy import text

from spoor.bad_rows import dead_letter_row
from spoor.events import decode_record, identity_record
from tests.support.local_stack import run_id, wait_until
from tests.support.strategies import context, json_values, messages, plausible, some_messages, times

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

EXAMPLES = 300


@pytest.fixture(scope="module")
def stack(start_process, test_settings, write_key, engine) -> str:
    """One collector (no rate limit to speak of) and one worker for the module."""
    start_process("collector", rate_limit_events_per_s=1e9, rate_limit_burst_events=10**9)
    start_process("worker")
    return f"http://127.0.0.1:{test_settings.collector_port}"

@st.composite
def requests(draw):
    endpoint = draw(st.sampled_from(["batch", "batch", "batch", "track", "page", "identify", "screen", "alias",
                                     "group", "nope"]))
    if endpoint == "batch":
        body = draw(st.one_of(
            st.fixed_dictionaries({"batch": st.lists(some_messages, max_size=8)},
                                  optional={"sentAt": times, "context": context, "extra": json_values}),
            st.fixed_dictionaries({"batch": st.lists(plausible, min_size=1, max_size=8)}),
            json_values))
    else:
        body = draw(st.one_of(plausible, messages, json_values))
    raw = draw(st.one_of(st.just(orjson.dumps(body)), st.just(orjson.dumps(body)), st.binary(max_size=64)))
    auth = draw(st.sampled_from(["key", "key", "key", "body", "none", "wrong", "garbage"]))
    return endpoint, body, raw, auth, draw(st.booleans())


def expected_outcome(endpoint: str, body, status: int, answer: dict) -> tuple[list[str], int]:
    """Event ids that must reach the events table, and how many dead letters, for one answered request."""
    messages = body.get("batch") if endpoint == "batch" else [body]
    rejected = {r["index"] for r in answer.get("rejected", [])} if status == 400 else None
    if status == 200:
        rejected = set()
    if rejected is None or not isinstance(messages, list):
        return [], 0
    found = []
    for index, message in enumerate(messages):
        if index in rejected or not isinstance(message, dict):
            continue
        message_id = message.get("messageId")
        if isinstance(message_id, (str, int)) and not isinstance(message_id, bool) and message_id != "":
            found.append(str(message_id))
    return found, len(rejected)


def test_no_input_breaks_the_collector_and_accepted_events_arrive(stack, write_key, engine):
    url = stack
    client = httpx.Client(base_url=url, timeout=30)
    basic = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    accepted: set[str] = set()
    dead_letters = 0
    statuses: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests())
    def one_request(request):
        nonlocal dead_letters
        endpoint, body, raw, auth, compress = request
        headers = {"Content-Type": "application/json"}
        is_json = raw == orjson.dumps(body)
        if auth == "key":
            headers["Authorization"] = basic
        elif auth == "body" and isinstance(body, dict) and is_json:
            body = {**body, "writeKey": write_key}
            raw = orjson.dumps(body)
        elif auth == "wrong":
            headers["Authorization"] = "Basic " + base64.b64encode(b"not-a-key:").decode()
        elif auth == "garbage":
            headers["Authorization"] = b"Basic \xe9t\xe9=="
        if compress:
            raw = gzip.compress(raw)
            headers["Content-Encoding"] = "gzip"
        response = client.post(f"/v1/{endpoint}", content=raw, headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text, raw[:300])
        if endpoint == "nope":
            assert response.status_code in (404, 405)
            return
        answer = response.json()
        if is_json and isinstance(body, dict) and ("rejected" in answer or response.status_code == 200):
            ids, rejected = expected_outcome(endpoint, body, response.status_code, answer)
            accepted.update(ids)
            dead_letters += rejected

    one_request()
    assert httpx.get(f"{url}/healthz").status_code == 200  # still up
    print(f"fuzz: answers {statuses}, {len(accepted)} accepted event ids, {dead_letters} rejected events")
    # Both paths were exercised.
    assert statuses.get(200, 0) > 10 and statuses.get(400, 0) > 10 and len(accepted) > 20, statuses

    def missing() -> set[str]:
        with engine.connect() as conn:
            found = {r[0] for r in conn.execute(text("SELECT event_id FROM events WHERE event_id = ANY(:ids)"),
                                                {"ids": list(accepted)})}
        return accepted - found

    wait_until(lambda: not missing(), 90, f"every accepted event in PostgreSQL (missing: {sorted(missing())[:5]})")

    def collector_dead_letters() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM dead_letters WHERE processor = 'collector'")).scalar()

    wait_until(lambda: collector_dead_letters() == dead_letters, 90,
               f"{dead_letters} rejected events in dead_letters")


def hostile_batch(run: str, now: datetime, key: str) -> tuple[bytes, dict[int, str], dict[str, str]]:
    """A raw /v1/batch body (some of it orjson cannot write), the indexes that must be rejected with the
    field each names, and the message ids that must be accepted (id -> event name). The write key is in
    the body and in every message, as analytics.js sends it."""
    def message(suffix: str, **fields) -> bytes:
        body = {"type": "track", "userId": f"{run}-user", "event": "Product Viewed",
                "messageId": f"{run}-{suffix}", "writeKey": key, **fields}
        return orjson.dumps(body)

    def nested(levels: int) -> bytes:
        return (b'{"type":"track","userId":"' + run.encode() + b'-user","event":"X","messageId":"' + run.encode()
                + b'-deep","writeKey":"' + key.encode() + b'","properties":{"a":'
                + b"[" * levels + b"]" * levels + b"}}")

    parts: list[tuple[bytes, str | None]] = [
        (message("ok-0"), None),
        (nested(300), "properties.a"),          # past orjson.dumps' 254 levels: was a 500 for the batch
        (message("ok-2", type="page", name="Home"), None),
        (message("future", timestamp="2099-01-01T00:00:00Z"), "timestamp"),  # was accepted as 2099
        (message("max-time", timestamp="9999-12-31T23:59:59+14:00"), "timestamp"),
        (message("old-sent", timestamp=now.isoformat(), sentAt="0001-01-01T00:00:00Z"), "timestamp"),
        (message("qty", event="Product Added", properties={"quantity": 1e308}), "properties.quantity"),
        (message("revenue", event="Order Completed", properties={"revenue": "1e400"}), "properties.revenue"),
        (message("float-id", userId=1.5), "userId"),
        (message("big-id").replace(f'"userId":"{run}-user"'.encode(), b'"userId":18446744073709551616'), "userId"),
        # A title cut in half by the client (JSON.stringify's lone surrogate): was a 400 for the whole body.
        (message("surrogate").replace(b'"event":"Product Viewed"', b'"event":"Caf\\ud83d"'), None),
        (message("nul").replace(f'"userId":"{run}-user"'.encode(), f'"userId":"{run}\\u0000"'.encode()), "$"),
        (message("odd-context", context={"campaign": "x", "page": [1], "sessionId": 18446744073709551615}), None),
        (message("deep-context", context={"a": orjson.loads(b"[" * 40 + b"]" * 40)}), "context.a"),
        (b'"not an object"', "$"),
        (message("price", event="Product Added", properties={"price": -1}), "properties.price"),
        (message("no-id").replace(f'"messageId":"{run}-no-id",'.encode(), b""), None),
    ]
    body = (b'{"writeKey":"' + key.encode() + b'","sentAt":"' + now.isoformat().encode() + b'","batch":['
            + b",".join(raw for raw, _ in parts) + b"]}")
    rejected = {i: field for i, (_, field) in enumerate(parts) if field is not None}
    accepted = {f"{run}-ok-0": "Product Viewed", f"{run}-ok-2": "Home", f"{run}-surrogate": "Caf\ufffd",
                f"{run}-odd-context": "Product Viewed"}
    return body, rejected, accepted


def read_topic(settings, topic: str, until, timeout: float = 60) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap.split(","), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=1000)
    values: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            values.extend(record.value for record in consumer)
            if until(values):
                break
    finally:
        consumer.close()
    return values


def test_a_hostile_batch_costs_only_its_hostile_messages(stack, test_settings, write_key):
    run = f"h{run_id(8)}"
    agent = f"hostile-batch-{run}"
    now = datetime.now(timezone.utc)
    body, must_reject, must_accept = hostile_batch(run, now, write_key)
    post = lambda raw, sent_at=None: httpx.post(  # noqa: E731
        f"{stack}/v1/batch", timeout=30, headers={"Content-Type": "application/json", "User-Agent": agent},
        content=raw if sent_at is None else raw.replace(now.isoformat().encode(), sent_at.encode(), 1))

    response = post(body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert {r["index"]: r["field"].split(".0")[0] for r in answer["rejected"]} == must_reject
    assert answer["accepted"] == len(must_accept) + 1  # and the message without an id
    reasons = {r["index"]: r["reason"] for r in answer["rejected"]}
    assert reasons[1] == "JSON nested deeper than 32 levels (max_nesting_depth)"
    assert "at most 300 s after its receipt" in reasons[3]
    # A retry of the request (sent again later, as a client does after a timeout) gives the message
    # without a messageId the same id; a single-message request with its key in the body is refused
    # without its key reaching the dead letter.
    retry = post(body, (now + timedelta(seconds=20)).isoformat())
    assert retry.status_code == 400 and [r["index"] for r in retry.json()["rejected"]] == sorted(must_reject)
    single = httpx.post(f"{stack}/v1/track", headers={"User-Agent": agent}, timeout=30, json={
        "writeKey": write_key, "userId": f"{run}-user", "event": "X", "messageId": f"{run}-single",
        "properties": {"price": "free"}})
    assert single.status_code == 400 and single.json()["rejected"][0]["field"] == "properties.price"

    def ours(values: list) -> list:
        # The worker's identity records share the topic (docs/identity.md): they are no events.
        return [e for value in values if identity_record(value) is None
                for e in decode_record(value) if e.user_key.startswith(run)]

    events = ours(read_topic(test_settings, test_settings.events_topic,
                             lambda values: len(ours(values)) >= 2 * (len(must_accept) + 1)))
    by_id: dict[str, list] = {}
    for event in events:
        by_id.setdefault(event.event_id, []).append(event)
    assert {event_id: group[0].name for event_id, group in by_id.items() if event_id in must_accept} == must_accept
    derived = [event_id for event_id in by_id if event_id not in must_accept]
    assert len(derived) == 1 and len(by_id[derived[0]]) == 2 and uuid.UUID(derived[0])  # one id for both attempts
    assert all(len(group) == 2 for group in by_id.values())  # nothing else, twice

    def dead(values: list) -> list[dict]:
        rows = [dead_letter_row("x", value) for value in values]
        return [r for r in rows if (r["request"] or {}).get("user_agent") == agent]

    rows = dead(read_topic(test_settings, test_settings.dead_letter_topic,
                           lambda values: len(dead(values)) >= 2 * len(must_reject) + 1))
    assert len(rows) == 2 * len(must_reject) + 1
    expected = sorted([(r["field"], r["reason"]) for r in answer["rejected"] + retry.json()["rejected"]]
                      + [("properties.price", single.json()["rejected"][0]["reason"])])
    assert sorted((r["field"], r["reason"]) for r in rows) == expected
    stored = orjson.dumps([r["payload"] for r in rows]) + orjson.dumps([r["request"] for r in rows])
    assert write_key.encode() not in stored
    deep = [r for r in rows if r["reason"].startswith("JSON nested deeper")]
    assert len(deep) == 4 and all(r["payload"]["truncated"] is True for r in deep)
    assert httpx.get(f"{stack}/healthz").status_code == 200
