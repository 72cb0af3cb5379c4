"""The alert notifications outbox on the real PostgreSQL, delivered to real local HTTP receivers.

A transition stored while no hub is sending (the worker died after the commit) is sent by a hub
started later; a receiver's 500 leaves the row pending and it is retried, even by another process;
a refusal (4xx) is given up with its error stored; two hubs at once send each row once."""

import argparse
import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from sqlalchemy import text

from spoor.alerts import outbox, store
from spoor.alerts.alert_metrics import NOTIFICATIONS
from spoor.alerts.notifiers import HttpNotifier, NotifierHub, RetryPolicy, alert_document
from spoor.cli.alert_commands import run as run_cli
from tests.support.alert_receivers import Receiver

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
SECRET = b"outbox-test-secret"
FAST = RetryPolicy(attempts=3, first_backoff_s=0.2)


def transition(fingerprint: str, status: str, rule_id: str = "orders-drop") -> dict:
    """An episode starting at T0 that fires at +5 min and resolves at +20 min."""
    return {"fingerprint": fingerprint, "rule_id": rule_id, "metric": "orders", "dimension": "global",
            "resolution": "5m", "severity": "critical", "status": status, "started_at": T0,
            "fired_at": T0 + timedelta(minutes=5) if status == "firing" else None,
            "resolved_at": T0 + timedelta(minutes=20) if status == "resolved" else None,
            "evidence": {"observed": 0 if status != "resolved" else 21, "expected": 20.0, "reason": status},
            "summary": "Orders dropped", "runbook": None}


def rows_of(engine, notifier: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(
            "SELECT id, status, alert->>'fingerprint' AS fingerprint, attempts, sent_at, failed_at, last_error, "
            "next_attempt_at > now() AS waiting FROM alert_notifications WHERE notifier = :n ORDER BY id"),
            {"n": notifier})]


def deliver(hub: NotifierHub, timeout_s: float = 30) -> None:
    """Start ``hub``, wait until nothing of its notifiers is pending, stop it."""
    async def scenario():
        hub.start()
        try:
            await asyncio.wait_for(hub.idle(), timeout_s)
        finally:
            await hub.stop()
    asyncio.run(scenario())


def as_sent(alert: dict) -> dict:
    return orjson.loads(orjson.dumps(alert_document(alert)))


def test_transitions_stored_while_no_hub_ran_are_sent_by_a_later_hub(engine):
    webhook, slack = Receiver(secret=SECRET), Receiver()
    names = ["webhook-crash", "slack-crash"]
    store.silence(engine, "silenced-rule", T0 + timedelta(days=36500))
    # The evaluator's transaction, then the process dies before any notifier ran.
    first = store.record(engine, [transition("crash-a", "firing"), transition("crash-b", "pending"),
                                  transition("crash-s", "firing", rule_id="silenced-rule")],
                         {"5m": T0 + timedelta(minutes=5)}, names)
    second = store.record(engine, [transition("crash-a", "resolved"), transition("crash-b", "cancelled")],
                          {"5m": T0 + timedelta(minutes=20)}, names)
    # Re-applying a transition after a crash adds no second notification.
    store.record(engine, [transition("crash-a", "resolved")], {"5m": T0 + timedelta(minutes=20)}, names)
    firing_a, resolved_a = first[0], second[0]
    assert [(r["fingerprint"], r["status"]) for r in rows_of(engine, "webhook-crash")] == [
        ("crash-a", "firing"), ("crash-a", "resolved")]  # not the pending, cancelled or silenced ones
    assert all(r["sent_at"] is None and r["attempts"] == 0 for r in rows_of(engine, "slack-crash"))
    # A process that had claimed the resolved Slack row died mid-send: its lease runs out.
    claimed = outbox.claim(engine, "slack-crash", lease_s=1)
    assert claimed is not None and claimed.alert["status"] == "firing"  # oldest first, firing before resolved
    assert outbox.claim(engine, "slack-crash", lease_s=1) is None  # the resolved one waits for the firing one

    hub = NotifierHub([HttpNotifier("webhook-crash", webhook.url + "/hooks", "webhook", SECRET),
                       HttpNotifier("slack-crash", slack.url, "slack")], engine, FAST, poll_s=0.2,
                      allow_private_addresses=True)
    try:
        deliver(hub)
    finally:
        webhook.close()
        slack.close()

    # Exactly the stored transitions, each as it was when stored (the episode's row has resolved since).
    assert webhook.bad_signatures == 0
    assert [body for _path, body in webhook.received] == [as_sent(firing_a), as_sent(resolved_a)]
    assert webhook.received[0][1]["resolved_at"] is None and webhook.received[0][1]["evidence"]["observed"] == 0
    assert [body["text"].split()[1] for _path, body in slack.received] == ["*FIRING*", "*RESOLVED*"]
    assert all(r["sent_at"] is not None and r["failed_at"] is None for r in rows_of(engine, "webhook-crash"))
    assert [r["attempts"] for r in rows_of(engine, "webhook-crash")] == [1, 1]
    assert [r["attempts"] for r in rows_of(engine, "slack-crash")] == [2, 1]  # the dead process's claim counted
    assert outbox.pending(engine, names) == 0


def test_a_500_leaves_the_row_pending_and_another_hub_retries_it(engine):
    webhook = Receiver(secret=SECRET, fail_first=1, fail_status=500)
    retried_before = NOTIFICATIONS.labels("webhook-retry", "retried")._value.get()
    [alert] = store.record(engine, [transition("retry-a", "firing")], {"5m": T0 + timedelta(minutes=5)},
                           ["webhook-retry"])
    notifiers = [HttpNotifier("webhook-retry", webhook.url, "webhook", SECRET)]
    slow_retry = RetryPolicy(attempts=3, first_backoff_s=2.0)

    async def first_process():
        hub = NotifierHub(notifiers, engine, slow_retry, poll_s=0.2, allow_private_addresses=True)
        hub.start()
        while not (await asyncio.to_thread(rows_of, engine, "webhook-retry"))[0]["last_error"]:
            await asyncio.sleep(0.02)
        await hub.stop()  # dies during the backoff

    try:
        asyncio.run(first_process())
        [row] = rows_of(engine, "webhook-retry")
        assert row["sent_at"] is None and row["failed_at"] is None and row["waiting"]
        assert row["attempts"] == 1 and row["last_error"] == "HTTP 500"
        assert webhook.received == []
        deliver(NotifierHub(notifiers, engine, slow_retry, poll_s=0.2, allow_private_addresses=True))
    finally:
        webhook.close()
    [row] = rows_of(engine, "webhook-retry")
    assert row["sent_at"] is not None and row["attempts"] == 2
    assert [body for _path, body in webhook.received] == [as_sent(alert)]
    assert webhook.bad_signatures == 0
    assert NOTIFICATIONS.labels("webhook-retry", "retried")._value.get() == retried_before + 1


def test_a_refusal_is_given_up_with_its_error_stored_and_listed(engine, test_settings, capsys):
    webhook = Receiver(secret=SECRET, fail_first=10, fail_status=400)
    failed_before = NOTIFICATIONS.labels("webhook-refused", "failed")._value.get()
    store.record(engine, [transition("refused-a", "firing")], {"5m": T0 + timedelta(minutes=5)}, ["webhook-refused"])
    try:
        deliver(NotifierHub([HttpNotifier("webhook-refused", webhook.url, "webhook", SECRET)], engine, FAST,
                            poll_s=0.2, allow_private_addresses=True))
    finally:
        webhook.close()
    [row] = rows_of(engine, "webhook-refused")
    assert row["failed_at"] is not None and row["sent_at"] is None
    assert row["attempts"] == 1 and row["last_error"] == "HTTP 400"  # a 4xx is not retried
    assert webhook.failed == 1 and webhook.received == []
    assert NOTIFICATIONS.labels("webhook-refused", "failed")._value.get() == failed_before + 1

    run_cli(test_settings, argparse.Namespace(action="notifications", limit=30))
    listed = [line for line in capsys.readouterr().out.splitlines() if "webhook-refused" in line]
    assert len(listed) == 1 and "failed" in listed[0] and "HTTP 400" in listed[0]


def test_two_hubs_at_once_send_each_notification_once(engine):
    webhook = Receiver(secret=SECRET)
    fingerprints = [f"pair-{i}" for i in range(12)]
    store.record(engine, [transition(f, "firing") for f in fingerprints], {"5m": T0 + timedelta(minutes=5)},
                 ["webhook-pair"])
    notifiers = [HttpNotifier("webhook-pair", webhook.url, "webhook", SECRET)]

    async def both():
        hubs = [NotifierHub(notifiers, engine, FAST, poll_s=0.2, allow_private_addresses=True) for _ in range(2)]
        for hub in hubs:
            hub.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(hub.idle() for hub in hubs)), 30)
        finally:
            for hub in hubs:
                await hub.stop()

    try:
        asyncio.run(both())
    finally:
        webhook.close()
    assert sorted(body["fingerprint"] for _path, body in webhook.received) == sorted(fingerprints)
    assert all(r["attempts"] == 1 and r["sent_at"] is not None for r in rows_of(engine, "webhook-pair"))
