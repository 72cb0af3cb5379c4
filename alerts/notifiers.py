"""Notifiers: Prometheus Alertmanager (v2 API), Slack-compatible webhook, HMAC-signed JSON webhook.

Transitions reach the notifiers through the outbox (``alert_notifications``,
see ``outbox``), written with the transition, so a notification survives the
process that stored it. Each notifier has its own task, with retries and
exponential backoff, so a receiver that is down delays only itself: never the
other notifiers, never the detector. A notification given up after the
retries is counted (``spoor_alert_notifications_total{outcome="failed"}``),
logged and kept with its last error.

Alertmanager expects its clients to re-send active alerts (it resolves an
alert it has not heard of for ``resolve_timeout``), so firing alerts carry an
``endsAt`` a few minutes ahead and the evaluator re-sends them regularly,
through a bounded in-memory queue (not stored: the next evaluator re-sends
them anyway; a full queue counts ``outcome="overflow"``).

Sends follow ``spoor.webhooks``: redirects are never followed (a 3xx is given
up like a 4xx: the URL is wrong, and following it would turn the POST into a
GET and hand the signature to another host), at most 64 KiB of an answer is
read, and the Slack and generic webhooks may not go to internal addresses
unless ``SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` (every address the host
resolves to is checked at each connection). Alertmanager is exempt from the
address rule: it is an internal service by nature (``alertmanager:9093`` in
docker-compose), set by the operator in the environment only, never through the
API, and requiring the flag for it would open campaign webhooks, which API users
define, to internal addresses too. The generic webhook needs its secret: a
worker configured with its URL and no secret does not start.
"""

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from spoor import webhooks
from spoor.alerts import outbox
from spoor.alerts.alert_metrics import NOTIFICATIONS
from spoor.settings import Settings
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

    def __post_init__(self):
        if self.kind == "webhook" and not self.secret:
            raise ValueError(f"notifier {self.name}: a webhook is never signed with an empty key "
                             "(set SPOOR_ALERT_WEBHOOK_SECRET)")

    @property
    def address_checked(self) -> bool:
        """Whether the internal-address rule applies (see the module's docstring for Alertmanager)."""
        return self.kind != "alertmanager"

    def request(self, alert: dict, now: datetime) -> tuple[str, bytes, dict]:
        headers = {"Content-Type": "application/json"}
        if self.kind == "alertmanager":
            return self.url.rstrip("/") + "/api/v2/alerts", orjson.dumps(alertmanager_payload(alert, now)), headers
        if self.kind == "slack":
            return self.url, orjson.dumps(slack_payload(alert)), headers
        body = orjson.dumps(alert_document(alert))
        timestamp = str(int(now.timestamp()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        return self.url, body, headers


def check_settings(settings: Settings) -> None:
    """At the worker's start: the alert webhook has a secret, the notifiers' URLs are allowed."""
    if settings.alert_webhook_url and not settings.alert_webhook_secret:
        raise ValueError("SPOOR_ALERT_WEBHOOK_URL is set but SPOOR_ALERT_WEBHOOK_SECRET is not: the alert "
                         "webhook is never sent unsigned (set a secret, or unset the URL)")
    for name, url in (("SPOOR_ALERTMANAGER_URL", settings.alertmanager_url),
                      ("SPOOR_ALERT_SLACK_WEBHOOK_URL", settings.alert_slack_webhook_url),
                      ("SPOOR_ALERT_WEBHOOK_URL", settings.alert_webhook_url)):
        if url:
            allow_private = settings.webhook_allow_private_addresses or name == "SPOOR_ALERTMANAGER_URL"
            try:
                webhooks.check_url(url, allow_private)
            except webhooks.RefusedAddress as err:
                raise ValueError(f"{name}: {err}") from None


def classify(status: int) -> str:
    """An HTTP answer: 'sent', 'refused' (a 3xx, never followed, or a 4xx other than 429: retrying will
    not help) or 'retry'."""
    if 200 <= status < 300:
        return "sent"
    if 300 <= status < 400 or (400 <= status < 500 and status != 429):
        return "refused"
    return "retry"


class _CheckedResolver(aiohttp.ThreadedResolver):
    """Every address a host resolves to is checked before a connection is made to one of them."""

    async def resolve(self, host: str, port: int = 0, family=0):
        hosts = await super().resolve(host, port, family)
        webhooks.check_addresses(host, [h["host"] for h in hosts])
        return hosts


async def _read_bounded(response: aiohttp.ClientResponse, limit: int = webhooks.MAX_RESPONSE_BYTES) -> bytes:
    data = bytearray()
    while len(data) < limit:
        chunk = await response.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def verdict(self, result: str, attempt: int) -> str:
        """After attempt number ``attempt`` (from 1) ended in ``result`` (``classify``): 'sent',
        'retried' or 'failed' (given up), the outcomes counted in ``NOTIFICATIONS``."""
        if result == "sent":
            return "sent"
        return "retried" if result == "retry" and attempt < self.attempts else "failed"

    def backoff_s(self, attempt: int) -> float:
        """Wait after failed attempt number ``attempt``: exponential from ``first_backoff_s``, capped."""
        return min(self.max_backoff_s, self.first_backoff_s * 2 ** (attempt - 1))


BATCH = 50  # stored notifications sent per round before the in-memory re-sends get their turn again


class NotifierHub:
    """One task per notifier sends its pending rows of the outbox in ``db`` (oldest first) and the
    re-sends queued in memory by ``notify``. ``wake`` and ``notify`` never block and never raise.

    A stored row is marked sent once the receiver accepted it; it stays pending across retries (the
    backoff is kept in the row) and is given up, with its last error, after ``retry.attempts`` or a
    refusal. The task looks for due rows when woken and at least every ``poll_s``, so rows left by a
    process that died are sent once a hub runs again. Without ``db`` only ``notify`` sends.
    """

    def __init__(self, notifiers: list[HttpNotifier], db: Engine | None = None, retry: RetryPolicy = RetryPolicy(),
                 timeout_s: float = 10.0, poll_s: float = 5.0, queue_size: int = 1000,
                 allow_private_addresses: bool = False):
        self.notifiers = notifiers
        self.allow_private_addresses = allow_private_addresses
        self.db = db
        self.retry = retry
        self.poll_s = poll_s
        self.lease_s = 2 * timeout_s + 5  # another process may take a claimed row after this: longer than a POST
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.queues = {n.name: asyncio.Queue(queue_size) for n in notifiers}
        self.wakes = {n.name: asyncio.Event() for n in notifiers}
        self.tasks: list[asyncio.Task] = []
        self.sessions: dict[str, aiohttp.ClientSession] = {}  # one per notifier: its own address rule

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.notifiers]

    def _checks_addresses(self, notifier: HttpNotifier) -> bool:
        return notifier.address_checked and not self.allow_private_addresses

    def start(self) -> None:
        if not self.sessions and not self.tasks:
            for n in self.notifiers:
                resolver = _CheckedResolver() if self._checks_addresses(n) else aiohttp.ThreadedResolver()
                self.sessions[n.name] = aiohttp.ClientSession(
                    timeout=self.timeout, connector=aiohttp.TCPConnector(resolver=resolver))
            self.tasks = [asyncio.ensure_future(self._deliver(n)) for n in self.notifiers]

    async def stop(self) -> None:
        """Stop sending. A row being sent stays pending and is claimed again when its lease ends."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            await session.close()

    def wake(self) -> None:
        """New rows are in the outbox: look now rather than at the next poll."""
        self.start()
        for event in self.wakes.values():
            event.set()

    def notify(self, alert: dict, only: str | None = None) -> None:
        """Queue ``alert`` in memory, not stored, for every notifier (or the kind ``only``)."""
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
            self.wakes[notifier.name].set()

    async def idle(self) -> None:
        """Wait until the queues are drained and no stored notification of these notifiers is pending
        (tests, shutdown)."""
        self.start()
        while True:
            for queue in self.queues.values():
                await queue.join()
            if self.db is None or not await asyncio.to_thread(outbox.pending, self.db, self.names):
                return
            await asyncio.sleep(0.1)

    async def _deliver(self, notifier: HttpNotifier) -> None:
        wake = self.wakes[notifier.name]
        while True:
            wake.clear()
            await self._send_queued(notifier)
            wait_s = self.poll_s
            if self.db is not None:
                try:
                    wait_s = min(wait_s, await self._send_stored(notifier))
                except SQLAlchemyError as err:  # the rows stay pending; the next round tries again
                    log.warning("notifier %s: outbox not readable (%s), next try in %.0f s", notifier.name,
                                err.__class__.__name__, self.poll_s)
            try:
                await asyncio.wait_for(wake.wait(), wait_s)
            except asyncio.TimeoutError:
                pass

    async def _send_queued(self, notifier: HttpNotifier) -> None:
        queue = self.queues[notifier.name]
        while not queue.empty():
            alert = queue.get_nowait()
            try:
                await self._send_with_retries(notifier, alert)
            finally:
                queue.task_done()

    async def _send_with_retries(self, notifier: HttpNotifier, alert: dict) -> None:
        for attempt in range(1, self.retry.attempts + 1):
            result, problem = await self._post(notifier, alert)
            if self._judge(notifier, alert, attempt, result, problem) != "retried":
                return
            await asyncio.sleep(self.retry.backoff_s(attempt))

    async def _send_stored(self, notifier: HttpNotifier) -> float:
        """Send up to ``BATCH`` due rows, one claim each; return how long to wait before looking again."""
        for _ in range(BATCH):
            row = await asyncio.to_thread(outbox.claim, self.db, notifier.name, self.lease_s)
            if row is None:
                wait_s = await asyncio.to_thread(outbox.seconds_until_due, self.db, notifier.name)
                return self.poll_s if wait_s is None else wait_s
            result, problem = await self._post(notifier, row.alert)
            verdict = self._judge(notifier, row.alert, row.attempts, result, problem)
            if verdict == "sent":
                await asyncio.to_thread(outbox.mark_sent, self.db, row.id)
            elif verdict == "retried":
                await asyncio.to_thread(outbox.retry_later, self.db, row.id, problem,
                                        self.retry.backoff_s(row.attempts))
            else:
                await asyncio.to_thread(outbox.give_up, self.db, row.id, problem)
        return 0.0

    async def _post(self, notifier: HttpNotifier, alert: dict) -> tuple[str, str]:
        """One attempt: its ``classify`` result and what the receiver answered."""
        url, body, headers = notifier.request(alert, datetime.now(timezone.utc))
        try:
            webhooks.check_literal(url, not self._checks_addresses(notifier))  # an IP is not resolved
            async with self.sessions[notifier.name].post(url, data=body, headers=headers,
                                                         allow_redirects=False) as response:
                answer = await _read_bounded(response)
                problem = f"HTTP {response.status}"
                if 300 <= response.status < 400:
                    problem += (f": redirect to {response.headers.get('Location', '')[:200]!r} not followed "
                                "(notifiers never follow redirects: configure the final URL)")
                elif response.status >= 300 and answer:
                    problem += ": " + answer[:200].decode("utf-8", "replace")
                return classify(response.status), problem
        except webhooks.RefusedAddress as err:
            return "refused", str(err)
        except aiohttp.ClientConnectorDNSError as err:
            if isinstance(err.os_error, webhooks.RefusedAddress):
                return "refused", str(err.os_error)
            return "retry", f"{type(err).__name__}: {err}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            return "retry", f"{type(err).__name__}: {err}"

    def _judge(self, notifier: HttpNotifier, alert: dict, attempt: int, result: str, problem: str) -> str:
        verdict = self.retry.verdict(result, attempt)
        NOTIFICATIONS.labels(notifier.name, verdict).inc()
        if verdict == "failed":
            log.error("notifier %s gave up on alert %s (%s) after %d attempts: %s", notifier.name,
                      alert["rule_id"], alert["status"], attempt, problem)
        return verdict
