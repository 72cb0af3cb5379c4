"""Judges complete metric windows as they appear in PostgreSQL; stores, publishes and notifies alerts.

Runs in the worker as a Faust timer, in the one worker that owns partition 0
of the events topic, so one process evaluates however many workers there are. Event-time driven: a window is
judged once every partition's watermark has passed its end
(``metric_watermarks``), whatever the wall clock says.

Order of effects per round, for each resolution:
1. judge the new windows in memory (``RuleEngine``);
2. publish the transitions to the alerts topic, awaiting the broker's ack;
3. store them, their notifications (the outbox, unless silenced) and the
   evaluation cursor in one transaction;
4. wake the notifiers, which send from the outbox (never blocking; see ``notifiers``).
A failure before 3 rebuilds the detectors from history up to the stored
cursor and evaluates again: the topic may then carry a transition twice
(consumers deduplicate on fingerprint, started_at and status); the table
never does. A crash after 3 loses no notification: the next hub sends it.
Detector state is not stored: it is rebuilt at start (and when the rules
file changes) by replaying ``history`` of windows silently.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import orjson
from sqlalchemy import Engine, func, select

from spoor.alerts import alert_metrics, store
from spoor.alerts.alert_rules import RulesFile
from spoor.alerts.engine import RuleEngine
from spoor.alerts.notifiers import NotifierHub, alert_document
from spoor.alerts.series import METRICS, metric_value
from spoor.metric_columns import RESOLUTIONS
from spoor.storage.metric_store import complete_until, window_totals
from spoor.storage.metric_tables import MetricWindow

log = logging.getLogger(__name__)


def window_ends(after: datetime, until: datetime, size_s: int, limit: int) -> list[datetime]:
    """Ends of the windows of ``size_s`` in (after, until], oldest first, at most ``limit``."""
    step = timedelta(seconds=size_s)
    first = datetime.fromtimestamp((int(after.timestamp()) // size_s + 1) * size_s, after.tzinfo)
    ends = []
    while first <= until and len(ends) < limit:
        ends.append(first)
        first += step
    return ends


class AlertEvaluator:
    def __init__(self, db: Engine, rules_file: RulesFile, partitions: int,
                 publish: Callable[[bytes, bytes], Awaitable], hub: NotifierHub,
                 history: timedelta = timedelta(days=8), resend_every_s: float = 60.0,
                 max_windows_per_round: int = 5000):
        self.db = db
        self.rules_file = rules_file
        self.partitions = partitions
        self.publish = publish
        self.hub = hub
        self.history = history
        self.resend_every_s = resend_every_s
        self.max_windows = max_windows_per_round
        self.engine: RuleEngine | None = None
        self.cursors: dict[str, datetime] = {}
        self.last_resend = 0.0

    async def tick(self) -> None:
        """One evaluation round; on failure the next round starts again from the stored cursors."""
        try:
            await self._round()
        except Exception:  # noqa: BLE001 - nothing is lost: the cursor did not move; rebuild and retry
            alert_metrics.EVALUATION_FAILURES.inc()
            log.exception("alert evaluation failed; retrying from the stored cursor")
            self.engine = None

    async def _round(self) -> None:
        if self.rules_file.reload_if_changed():
            alert_metrics.RULES_RELOADS.labels("loaded").inc()
            log.info("alert rules reloaded from %s", self.rules_file.path)
            self.engine = None
        elif self.rules_file.last_error:
            alert_metrics.RULES_RELOADS.labels("invalid").inc()
            log.error("alert rules not reloaded (keeping the previous ones): %s", self.rules_file.last_error)
            self.rules_file.last_error = None
        if self.engine is None:
            self.engine = await asyncio.to_thread(self._rebuild)
        until = await asyncio.to_thread(complete_until, self.db, self.partitions)
        if until is not None:
            for resolution in RESOLUTIONS:
                await self._evaluate(resolution, until)
        if time.monotonic() - self.last_resend >= self.resend_every_s:
            self.last_resend = time.monotonic()
            for alert in await asyncio.to_thread(store.firing, self.db):
                self.hub.notify(alert, only="alertmanager")  # Alertmanager forgets alerts not re-sent

    def _rebuild(self) -> RuleEngine:
        """Detectors warmed on the history before the stored cursors, without emitting anything."""
        engine = RuleEngine(self.rules_file.rules)
        self.cursors = store.cursors(self.db)
        for resolution, cursor in self.cursors.items():
            for end, by_dimension in self._windows(resolution, cursor - self.history, cursor, None):
                engine.evaluate(resolution, end, by_dimension)
        return engine

    def _windows(self, resolution: str, after: datetime, until: datetime, limit: int | None):
        size_s = RESOLUTIONS[resolution]
        ends = window_ends(after, until, size_s, limit or 10 ** 7)
        if not ends:
            return []
        totals = window_totals(self.db, resolution, after, ends[-1])
        return [(end, totals.get(end, {})) for end in ends]

    def _start(self, resolution: str) -> datetime | None:
        """Where evaluation of a resolution begins when it never ran: just before the first window."""
        with self.db.connect() as conn:
            first = conn.execute(select(func.min(MetricWindow.window_end))
                                 .where(MetricWindow.resolution == resolution)).scalar_one()
        return None if first is None else first - timedelta(seconds=RESOLUTIONS[resolution])

    async def _evaluate(self, resolution: str, until: datetime) -> None:
        after = self.cursors.get(resolution) or await asyncio.to_thread(self._start, resolution)
        if after is None or after >= until:
            return
        windows = await asyncio.to_thread(self._windows, resolution, after, until, self.max_windows)
        if not windows:
            return
        rows = []
        for end, by_dimension in windows:
            for evaluation in self.engine.evaluate(resolution, end, by_dimension):
                if evaluation.transition:
                    rows.append(store.alert_row(evaluation))
        for row in rows:
            await self.publish(row["fingerprint"].encode(), orjson.dumps(alert_document(row)))
        last, latest = windows[-1]
        for dimension, totals in latest.items():  # Prometheus: the newest complete window's values
            if totals.get("partial"):
                continue
            for metric in METRICS:
                value, _volume = metric_value(metric, totals)
                if value is not None:
                    alert_metrics.BUSINESS_METRIC.labels(metric, dimension, resolution).set(float(value))
        stored = await asyncio.to_thread(store.record, self.db, rows, {resolution: last}, self.hub.names)
        self.cursors[resolution] = last
        alert_metrics.WINDOWS_EVALUATED.labels(resolution).inc(len(windows))
        alert_metrics.EVALUATED_UNTIL.labels(resolution).set(last.timestamp())
        for alert in stored:
            alert_metrics.TRANSITIONS.labels(alert["rule_id"], alert["status"]).inc()
            log.info("alert %s %s on %s (%s)", alert["rule_id"], alert["status"], alert["dimension"],
                     alert["evidence"].get("reason"))
        if any(alert["status"] in store.NOTIFIED for alert in stored):
            self.hub.wake()
        firing = await asyncio.to_thread(store.firing, self.db)
        for severity in ("info", "warning", "critical"):
            alert_metrics.FIRING.labels(severity).set(sum(a["severity"] == severity for a in firing))
