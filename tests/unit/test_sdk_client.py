"""The Python SDK's queue, batching and retry logic, against a small local HTTP server with scripted answers."""

import base64
import gzip
import json
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from spoor_sdk import Client, RetryPolicy
from spoor_sdk.retry import parse_retry_after

FAST = RetryPolicy(max_retries=5, base_s=0.01, cap_s=0.05)


class ScriptedCollector:
    """Answers POST /v1/batch with ``answer(batch) -> (status, headers, body)``; records every request."""

    def __init__(self, answer=lambda batch: (200, {}, {"success": True}), delay: float = 0.0):
        self.answer = answer
        self.delay = delay
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = json.loads(raw)
                outer.requests.append({"path": self.path, "auth": self.headers["Authorization"], "body": body,
                                       "at": time.monotonic()})
                time.sleep(outer.delay)
                status, headers, answer = outer.answer(body["batch"])
                data = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered_ids(self) -> list[str]:
        return [m["messageId"] for r in self.requests for m in r["body"]["batch"]]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    servers = []

    def start(*args, **kwargs) -> ScriptedCollector:
        servers.append(ScriptedCollector(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client_for(server, **options) -> Client:
    return Client("wk", server.url, flush_at_exit=False, **{"retry": FAST, "flush_interval": 0.05, **options})


def test_batches_carry_auth_sent_at_and_segment_messages(collector):
    server = collector()
    client = client_for(server, batch_size=3)
    for i in range(7):
        assert client.track(f"u{i}", "Product Viewed", {"product_id": f"P{i}"}, message_id=f"m{i}")
    client.identify("u1", {"plan": "pro"}, message_id="m-id")
    client.order_completed("u1", order_id="o1", revenue="10.50", currency="EUR", message_id="m-order",
                           products=[{"product_id": "P1", "price": 10.5}])
    assert client.shutdown(5)

    assert server.delivered_ids() == [f"m{i}" for i in range(7)] + ["m-id", "m-order"]
    assert max(len(r["body"]["batch"]) for r in server.requests) == 3
    first = server.requests[0]
    assert first["path"] == "/v1/batch" and first["auth"] == "Basic " + base64.b64encode(b"wk:").decode()
    datetime.fromisoformat(first["body"]["sentAt"])
    order = server.requests[-1]["body"]["batch"][-1]
    assert order["type"] == "track" and order["event"] == "Order Completed" and order["userId"] == "u1"
    assert order["properties"] == {"order_id": "o1", "revenue": "10.50", "currency": "EUR",
                                   "products": [{"product_id": "P1", "price": 10.5}]}
    assert order["context"]["library"]["name"] == "spoor-sdk-python"
    assert (client.stats.queued, client.stats.sent, client.stats.failed) == (9, 9, 0)


def test_retries_5xx_and_429_honouring_retry_after(collector):
    answers = iter([(503, {"Retry-After": "1"}, {}), (429, {"Retry-After": "1"}, {}), (500, {}, {})])
    server = collector(lambda batch: next(answers, (200, {}, {"success": True})))
    client = client_for(server)
    client.track("u", "X", message_id="m1")
    assert client.flush(10)
    times = [r["at"] for r in server.requests]
    assert len(times) == 4 and server.delivered_ids() == ["m1"] * 4
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95  # Retry-After: 1 obeyed
    assert times[3] - times[2] < 0.5                                     # no Retry-After: short backoff
    assert (client.stats.sent, client.stats.retries, client.stats.failed) == (1, 3, 0)
    client.shutdown()


def test_network_errors_are_retried_then_given_up_with_a_callback():
    errors = []
    client = Client("wk", "http://127.0.0.1:9", flush_at_exit=False, flush_interval=0.01,
                    retry=RetryPolicy(max_retries=3, base_s=0.01, cap_s=0.02),
                    on_error=lambda err, msgs: errors.append((type(err).__name__, len(msgs))))
    client.track("u", "X")
    client.track("u", "Y")
    assert client.flush(10)
    assert (client.stats.retries, client.stats.failed, client.stats.sent) == (3, 2, 0)
    assert errors == [("RetryableError", 2)]
    client.shutdown()


def test_413_splits_the_batch(collector):
    server = collector(lambda batch: (413, {}, {"error": "too big"}) if len(batch) > 2 else (200, {}, {}))
    client = client_for(server, batch_size=8)
    for i in range(8):
        client.track("u", "X", message_id=f"m{i}")
    assert client.shutdown(5)
    accepted = [r for r in server.requests if len(r["body"]["batch"]) <= 2]
    assert sorted(m["messageId"] for r in accepted for m in r["body"]["batch"]) == [f"m{i}" for i in range(8)]
    assert client.stats.sent == 8


def test_invalid_events_are_counted_not_retried(collector):
    refused = []
    server = collector(lambda batch: (400, {}, {"success": False, "accepted": 1,
                                                "rejected": [{"index": 1, "field": "properties.price",
                                                              "reason": "must be a finite number >= 0"}]}))
    client = client_for(server, on_error=lambda err, msgs: refused.extend(msgs))
    client.track("u", "Product Added", {"price": 1}, message_id="good")
    client.track("u", "Product Added", {"price": -1}, message_id="bad")
    assert client.shutdown(5)
    assert len(server.requests) == 1
    assert (client.stats.sent, client.stats.rejected) == (1, 1)
    assert [m["messageId"] for m in refused] == ["bad"]


def test_a_bad_write_key_is_not_retried(collector):
    server = collector(lambda batch: (401, {}, {"error": "missing or unknown write key"}))
    client = client_for(server)
    client.track("u", "X")
    assert client.shutdown(5)
    assert len(server.requests) == 1 and client.stats.failed == 1


def test_a_full_queue_drops_the_newest_message_and_says_so(collector):
    server = collector(delay=0.5)
    dropped = []
    client = client_for(server, max_queue_size=3, batch_size=1,
                        on_drop=lambda message, reason: dropped.append((message["messageId"], reason)))
    assert client.track("u", "X", message_id="in-flight")
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:  # the sender is busy for half a second
        time.sleep(0.01)
    results = [client.track("u", "X", message_id=f"m{i}") for i in range(6)]
    assert results == [True, True, True, False, False, False]
    assert dropped == [("m3", "queue_full"), ("m4", "queue_full"), ("m5", "queue_full")]
    assert client.stats.dropped == 3
    assert client.shutdown(10)
    assert server.delivered_ids() == ["in-flight", "m0", "m1", "m2"]


def test_oversized_messages_and_calls_after_shutdown_are_dropped(collector):
    server = collector()
    dropped = []
    client = client_for(server, on_drop=lambda message, reason: dropped.append(reason))
    assert not client.track("u", "X", {"blob": "x" * 40_000})
    assert client.shutdown(5)
    assert not client.track("u", "X")
    assert dropped == ["too_large", "closed"] and server.requests == []


def test_calls_that_can_never_be_valid_raise():
    client = Client("wk", "http://127.0.0.1:9", flush_at_exit=False)
    with pytest.raises(ValueError):
        client.track(None, "X")
    with pytest.raises(ValueError):
        client.track("u", "")
    with pytest.raises(TypeError):
        client.track("u", "X", {"what": object()})
    client.shutdown(1)


def test_backoff_grows_with_full_jitter_and_obeys_retry_after():
    policy = RetryPolicy(base_s=0.5, cap_s=30, max_retry_after_s=60)
    rng = random.Random(7)
    for attempt in range(12):
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= min(30, 0.5 * 2 ** attempt)
        assert max(delays) > 0.5 * min(30, 0.5 * 2 ** attempt)  # spread over the whole range
    assert policy.delay(0, retry_after=7, rng=rng) == 7
    assert policy.delay(0, retry_after=600, rng=rng) == 60


def test_retry_after_as_seconds_or_http_date():
    now = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=20), usegmt=True), now) == 20.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_messages_go_out_after_the_flush_interval_without_a_flush(collector):
    server = collector()
    client = client_for(server, flush_interval=0.2, batch_size=100)
    client.track("u", "X", message_id="m1")
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.delivered_ids() == ["m1"]
    client.shutdown()


def test_the_module_level_api_uses_one_default_client(collector):
    import spoor_sdk
    server = collector()
    with pytest.raises(RuntimeError):
        spoor_sdk.track("u", "X")
    spoor_sdk.init("wk", host=server.url, flush_at_exit=False, flush_interval=0.05)
    assert spoor_sdk.product_viewed("u", product_id="P1", message_id="mod-1")
    assert spoor_sdk.checkout_started("u", message_id="mod-2")
    assert spoor_sdk.flush(5)
    assert spoor_sdk.shutdown()
    spoor_sdk.default_client = None
    assert server.delivered_ids() == ["mod-1", "mod-2"]
    assert server.requests[0]["body"]["batch"][0]["event"] == "Product Viewed"


def test_shutdown_gives_up_within_its_timeout_when_the_collector_keeps_failing(collector):
    server = collector(lambda batch: (503, {"Retry-After": "2"}, {}))
    client = client_for(server, batch_size=1, retry=RetryPolicy(max_retries=100))
    for i in range(5):
        client.track("u", "X", message_id=f"m{i}")
    started = time.monotonic()
    assert client.shutdown(timeout=1) is False
    assert time.monotonic() - started < 5
    assert (client.stats.sent, client.stats.failed) == (0, 5)
