"""Notifier delivery over real local HTTP: retries with backoff, and a dead receiver blocks nobody."""

import asyncio
import socket
import time
from datetime import datetime, timezone

from spoor.alerts.alert_metrics import NOTIFICATIONS
from spoor.alerts.notifiers import HttpNotifier, NotifierHub, RetryPolicy, classify
from tests.support.alert_receivers import Receiver

ALERT = {"fingerprint": "fp", "rule_id": "orders-drop", "metric": "orders", "dimension": "global",
         "resolution": "5m", "severity": "critical", "status": "firing",
         "started_at": datetime(2024, 1, 1, tzinfo=timezone.utc), "fired_at": None, "resolved_at": None,
         "evidence": {"observed": 0, "expected": 20}, "summary": None, "runbook": None}


def count(name: str, outcome: str) -> float:
    return NOTIFICATIONS.labels(name, outcome)._value.get()


def test_a_dead_receiver_does_not_delay_the_others_and_gives_up_counted():
    slack, flaky = Receiver(), Receiver(secret=b"s", fail_first=2)
    hanging = socket.socket()  # accepts connections (backlog) and never answers
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)
    dead_url = f"http://127.0.0.1:{hanging.getsockname()[1]}"
    failed_before = count("dead", "failed")

    async def scenario():
        hub = NotifierHub([HttpNotifier("dead", dead_url, "webhook", b"s"),
                           HttpNotifier("slack-test", slack.url, "slack"),
                           HttpNotifier("flaky", flaky.url, "webhook", b"s")],
                          retry=RetryPolicy(attempts=3, first_backoff_s=0.2), timeout_s=1.0,
                          allow_private_addresses=True)  # the receivers are on 127.0.0.1
        started = time.monotonic()
        hub.notify(ALERT)
        while not (slack.received and flaky.received):
            await asyncio.sleep(0.01)
        delivered_after = time.monotonic() - started
        await hub.idle()
        await hub.stop()
        return delivered_after

    try:
        delivered_after = asyncio.run(scenario())
    finally:
        slack.close()
        flaky.close()
        hanging.close()
    assert delivered_after < 1.5  # the flaky one's two retries (0.2 s + 0.4 s), not the hanging one's 3 timeouts
    assert "FIRING" in slack.received[0][1]["text"]
    assert flaky.failed == 2 and flaky.bad_signatures == 0 and flaky.received[0][1]["rule_id"] == "orders-drop"
    assert count("dead", "failed") == failed_before + 1


def test_an_answer_is_sent_refused_or_retried():
    assert [classify(s) for s in (200, 202, 204)] == ["sent"] * 3
    assert [classify(s) for s in (400, 401, 404, 410)] == ["refused"] * 4  # retrying will not help
    assert [classify(s) for s in (301, 302, 307, 308)] == ["refused"] * 4  # redirects are never followed
    assert [classify(s) for s in (429, 500, 502, 503)] == ["retry"] * 4


def test_the_retry_policy_gives_up_after_its_attempts_or_a_refusal():
    policy = RetryPolicy(attempts=3, first_backoff_s=0.5, max_backoff_s=1.5)
    assert [policy.verdict("retry", attempt) for attempt in (1, 2, 3)] == ["retried", "retried", "failed"]
    assert policy.verdict("refused", 1) == "failed"
    assert policy.verdict("sent", 3) == "sent"
    assert [policy.backoff_s(attempt) for attempt in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]  # doubled, capped
