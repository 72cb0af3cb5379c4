"""Notifiers: Prometheus Alertmanager (v2 API), Slack-compatible webhook, HMAC-signed JSON webhook.

Each notifier has its own bounded queue and its own task, with retries and
exponential backoff, so a receiver that is down delays only itself: never the
other notifiers, never the detector. A notification that cannot be delivered
after the retries, or that finds its queue full, is counted
(``spoor_alert_notifications_total{outcome="failed"|"overflow"}``) and logged.

Alertmanager expects its clients to re-send active alerts (it resolves an
alert it has not heard of for ``resolve_timeout``), so firing alerts carry an
``endsAt`` a few minutes ahead and the evaluator re-sends them regularly.
"""

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson

from alerts.metrics import NOTIFICATIONS
from spoor.signing import webhook_mac

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Spoor-Signature"
TIMESTAMP_HEADER = "X-Spoor-Timestamp"
ALERTMANAGER_VALIDITY = timedelta(minutes=5)


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def alert_document(alert: dict) -> dict:
    """The JSON shape of an alert everywhere it leaves Spoor (Kafka topic, webhook)."""
    return {"schema": "spoor.alert/1", **{k: _iso(v) for k, v in alert.items()}}


def alertmanager_payload(alert: dict, now: datetime) -> list[dict]:
    """POST /api/v2/alerts body: a resolved alert ends at its resolution, a firing one soon (re-sent)."""
    evidence = alert.get("evidence") or {}
    ends = alert["resolved_at"] if alert["status"] == "resolved" else now + ALERTMANAGER_VALIDITY
    annotations = {"summary": alert.get("summary") or f"{alert['metric']} anomaly on {alert['dimension']}",
                   "observed": str(evidence.get("observed")), "expected": str(evidence.get("expected")),
                   "score": str(evidence.get("score")), "reason": str(evidence.get("reason"))}
    if alert.get("runbook"):
        annotations["runbook_url"] = alert["runbook"]
    return [{
        "labels": {"alertname": alert["rule_id"], "severity": alert["severity"], "metric": alert["metric"],
                   "dimension": alert["dimension"], "resolution": alert["resolution"],
                   "fingerprint": alert["fingerprint"], "service": "spoor"},
        "annotations": annotations,
        "startsAt": _iso(alert.get("fired_at") or alert["started_at"]),
        "endsAt": _iso(ends),
    }]


def slack_payload(alert: dict) -> dict:
    evidence = alert.get("evidence") or {}
    icon = ":white_check_mark:" if alert["status"] == "resolved" else ":rotating_light:"
    text = (f"{icon} *{alert['status'].upper()}* [{alert['severity']}] {alert['rule_id']}: "
            f"{alert.get('summary') or alert['metric']} ({alert['dimension']}, {alert['resolution']} windows). "
            f"Observed {evidence.get('observed')} vs expected {evidence.get('expected')} "
            f"(score {evidence.get('score')}) at {evidence.get('window_end')}.")
    if alert.get("runbook"):
        text += f" Runbook: {alert['runbook']}"
    return {"text": text}


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC of "<timestamp>.<body>">``; the timestamp lets receivers refuse replays."""
    return "sha256=" + webhook_mac(secret, timestamp, body)


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, max_age_s: float = 300) -> bool:
    """What a receiver does: constant-time compare, and refuse old timestamps."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass
class HttpNotifier:
    """One receiver: builds the request for an alert and posts it."""

    name: str
    url: str
    kind: str  # alertmanager, slack, webhook
    secret: bytes | None = None

    def request(self, alert: dict, now: datetime) -> tuple[str, bytes, dict]:
        headers = {"Content-Type": "application/json"}
        if self.kind == "alertmanager":
            return self.url.rstrip("/") + "/api/v2/alerts", orjson.dumps(alertmanager_payload(alert, now)), headers
        if self.kind == "slack":
            return self.url, orjson.dumps(slack_payload(alert)), headers
        body = orjson.dumps(alert_document(alert))
        timestamp = str(int(now.timestamp()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(self.secret or b"", timestamp, body)
        return self.url, body, headers


class NotifierHub:
    """Queues per notifier; ``notify`` never blocks and never raises."""

    def __init__(self, notifiers: list[HttpNotifier], attempts: int = 5, first_backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, queue_size: int = 1000, timeout_s: float = 10.0):
        self.notifiers = notifiers
        self.attempts = attempts
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.queues = {n.name: asyncio.Queue(queue_size) for n in notifiers}
        self.tasks: list[asyncio.Task] = []
        self.session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if not self.tasks:
            self.session = aiohttp.ClientSession(timeout=self.timeout)
            self.tasks = [asyncio.ensure_future(self._deliver(n)) for n in self.notifiers]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        if self.session:
            await self.session.close()

    def notify(self, alert: dict, only: str | None = None) -> None:
        """Queue ``alert`` for every notifier (or the kind ``only``)."""
        self.start()
        for notifier in self.notifiers:
            if only and notifier.kind != only:
                continue
            try:
                self.queues[notifier.name].put_nowait(alert)
            except asyncio.QueueFull:
                NOTIFICATIONS.labels(notifier.name, "overflow").inc()
                log.error("notifier %s: queue full, alert %s (%s) not sent", notifier.name,
                          alert["rule_id"], alert["status"])

    async def idle(self) -> None:
        """Wait until every queue is drained (tests, shutdown)."""
        for queue in self.queues.values():
            await queue.join()

    async def _deliver(self, notifier: HttpNotifier) -> None:
        queue = self.queues[notifier.name]
        while True:
            alert = await queue.get()
            try:
                await self._send_with_retries(notifier, alert)
            finally:
                queue.task_done()

    async def _send_with_retries(self, notifier: HttpNotifier, alert: dict) -> None:
        for attempt in range(self.attempts):
            url, body, headers = notifier.request(alert, datetime.now(timezone.utc))
            try:
                async with self.session.post(url, data=body, headers=headers) as response:
                    if response.status < 300:
                        NOTIFICATIONS.labels(notifier.name, "sent").inc()
                        return
                    problem = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status != 429:
                        break  # the receiver refuses this request: retrying will not help
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                problem = f"{type(err).__name__}: {err}"
            if attempt < self.attempts - 1:
                NOTIFICATIONS.labels(notifier.name, "retried").inc()
                await asyncio.sleep(min(self.max_backoff_s, self.first_backoff_s * 2 ** attempt))
        NOTIFICATIONS.labels(notifier.name, "failed").inc()
        log.error("notifier %s gave up on alert %s (%s): %s", notifier.name, alert["rule_id"], alert["status"], problem)
