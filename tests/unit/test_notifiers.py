"""Notifier delivery over real local HTTP: retries with backoff, and a dead receiver blocks nobody."""

import asyncio
import socket
import time
from datetime import datetime, timezone

from alerts.metrics import NOTIFICATIONS
from alerts.notifiers import HttpNotifier, NotifierHub
from tests.alert_receivers import Receiver

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
                          attempts=3, first_backoff_s=0.2, timeout_s=1.0)
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
