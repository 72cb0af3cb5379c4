"""Fuzzing the HTTP API with hypothesis against the real collector, Kafka, worker and PostgreSQL.

Whatever is sent, the collector answers without a 5xx and stays up; every event it accepted is
found in the events table, and every event it rejected in dead_letters (so no input can poison
the worker either). Bounded: a few hundred requests.
"""

import base64
import gzip

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.conftest import wait_until
from tests.strategies import context, json_values, messages, plausible, some_messages, times

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

EXAMPLES = 300

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


def test_no_input_breaks_the_collector_and_accepted_events_arrive(start_process, test_settings, write_key,
                                                                 engine):
    start_process("collector", rate_limit_events_per_s=1e9, rate_limit_burst_events=10**9)
    start_process("worker")
    url = f"http://127.0.0.1:{test_settings.collector_port}"
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
