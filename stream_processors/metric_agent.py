"""Faust shell of the business-metric windows and of the alert evaluator.

The profile agent hands each batch's decoded events to ``fold_batch`` (one
decode per record) and a dead-letter agent folds bad rows, into
``MetricWindows`` (pure); when the watermark closes windows, they and the
partitions' watermarks are written to PostgreSQL in one transaction before
the profile agent's batch is acknowledged (fail-stop otherwise). A timer on the group leader runs the
``AlertEvaluator`` over complete windows (on the worker owning partition 0).

Open windows live in memory. A restart loses the open windows' events that
were acknowledged before it; those windows are written ``partial`` and the
detectors skip them rather than see a false drop.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

import faust
import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from spoor.alerts.alert_rules import DEFAULT_RULES, RulesFile
from spoor.alerts.evaluator import AlertEvaluator
from spoor.alerts.notifiers import HttpNotifier, NotifierHub, RetryPolicy, check_settings
from spoor.bad_rows import SCHEMA as BAD_ROW_SCHEMA
from spoor.events import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME, Event
from spoor.settings import Settings
from spoor.storage.metric_store import MetricWindowWriter
from spoor.stream_processors import worker_metrics
from spoor.stream_processors.blocking import fail_stop, fail_stop_on_error, run_blocking
from spoor.stream_processors.continuity import OffsetContinuity
from spoor.stream_processors.faust_internals import committed_offset, track_batches
from spoor.stream_processors.metric_windows import MetricWindows

log = logging.getLogger(__name__)


def dead_letter_time(raw: bytes, appended_at: float | None = None,
                     max_future_s: float = 300.0) -> tuple[datetime, str | None, str] | None:
    """(when, source, processor) of a bad row: the original event's time when it has one, so dead
    letters fall in the same event-time windows as the events they were sent with. A claimed time
    is the rejected client's word: it counts only between 1970 and the bad row's arrival in Kafka
    (``appended_at``) plus ``max_future_s``; else the row's arrival is used."""
    try:
        row = orjson.loads(raw)
    except (TypeError, orjson.JSONDecodeError):
        return None
    if not isinstance(row, dict) or row.get("schema") != BAD_ROW_SCHEMA:
        return None
    latest = None if appended_at is None else appended_at + max_future_s
    source = row.get("source") if isinstance(row.get("source"), str) else None
    payload = row.get("payload") if isinstance(row.get("payload"), dict) else {}
    for candidate in (payload.get("event_time"), payload.get("timestamp"), row.get("received_at")):
        try:
            at = datetime.fromisoformat(str(candidate).replace("Z", "+00:00"))
            stamp = at.timestamp()
        except (ValueError, OverflowError):
            continue
        if at.tzinfo is not None and EARLIEST_EVENT_TIME <= at and (latest is None or stamp <= latest) \
                and at < LATEST_EVENT_TIME:
            return at, source, str(row.get("processor"))
    if appended_at is not None:
        return datetime.fromtimestamp(appended_at, timezone.utc), source, str(row.get("processor"))
    return None


class PartitionGuard:
    """Offset continuity for one agent (see continuity.py), with its own positions."""

    def __init__(self, app: faust.App):
        self.app = app
        self.continuity = OffsetContinuity()

    async def check(self, batch) -> None:
        holes = {}
        for event in batch:
            tp = event.message.tp
            start = committed_offset(self.app, tp)
            if start is None and tp not in self.continuity.next_offset:
                start = (await self.app.consumer.earliest_offsets(tp)).get(tp)
            missing = self.continuity.admit(tp, event.message.offset, start)
            if missing is not None:
                holes.setdefault(tp, missing)
        if holes:
            worker_metrics.SKIPPED_RECORD_REPAIRS.inc(len(holes))
            fail_stop(f"the consumer skipped records at {holes}; restarting to read them again")


def register_metric_windows(app: faust.App, settings: Settings, dead_letter_topic,
                            engine: Engine) -> Callable[[list, list[tuple[int, Event]]], Awaitable[None]]:
    """The dead-letter agent, lag and alert timers; returns the events' fold for the profile agent."""
    windows = MetricWindows(lateness=timedelta(seconds=settings.metric_lateness_s))
    writer = MetricWindowWriter(engine)
    dead_letter_guard = PartitionGuard(app)

    @app.on_partitions_revoked.connect
    async def forget_metric_positions_on_revoke(_app, revoked, **_kwargs):
        dead_letter_guard.continuity.reset()
        last_offsets.clear()
        written_marks.clear()
        caught_up_since.clear()

    @app.on_partitions_assigned.connect
    async def forget_metric_positions_on_assign(_app, assigned, **_kwargs):
        dead_letter_guard.continuity.reset()
        last_offsets.clear()
        written_marks.clear()
        caught_up_since.clear()

    last_offsets: dict = {}  # tp -> last offset folded
    written_marks: dict = {}  # partition -> watermark last written (unchanged ones are not rewritten)
    caught_up_since: dict = {}  # tp -> monotonic time it was first seen with nothing left to read

    def idle_partitions() -> set[int]:
        """Assigned partitions with nothing left to read for ``metric_idle_partition_s``."""
        idle, now = set(), time.monotonic()
        for tp in app.consumer.assignment():
            if tp.topic != settings.events_topic:
                continue
            highwater = app.consumer.highwater(tp)
            last = last_offsets.get(tp)
            position = last + 1 if last is not None else committed_offset(app, tp)
            if highwater is None or position is None or position < highwater:
                caught_up_since.pop(tp, None)
                continue
            if now - caught_up_since.setdefault(tp, now) >= settings.metric_idle_partition_s:
                idle.add(tp.partition)
        return idle

    async def close_windows() -> None:
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.events_topic}
        rows = windows.close_due(idle_partitions())
        marks = {p: at for p, at in windows.closed.items() if p in assigned and written_marks.get(p) != at}
        if not rows and not marks:
            return
        await run_blocking(writer.write, rows, marks)
        written_marks.update(marks)
        worker_metrics.METRIC_WINDOWS_WRITTEN.inc(len(rows))
        worker_metrics.METRIC_LATE_EVENTS.set(windows.late_events)
        for row in rows:
            worker_metrics.METRIC_WINDOW_END.labels(row["resolution"]).set(row["window_end"].timestamp())

    async def fold_batch(batch, first_seen: list[tuple[int, Event]]) -> None:
        """Called by the profile agent with its batch (already checked for holes) and the events it
        decoded and saw for the first time (a retried event is counted once); closed windows are
        written before the batch's ack."""
        for event in batch:
            last_offsets[event.message.tp] = event.message.offset
        windows.add_events(first_seen)
        await fail_stop_on_error(close_windows(), "writing metric windows")
        if windows.newest_event is not None:
            worker_metrics.EVENT_TIME_LAG.set(time.time() - windows.newest_event.timestamp())

    @app.agent(dead_letter_topic, name="metric-dead-letters")
    async def fold_dead_letter_windows(stream):
        async for batch in track_batches(stream, 500, 1.0):
            await dead_letter_guard.check(batch)
            for event in batch:
                parsed = dead_letter_time(event.value, event.message.timestamp, settings.max_future_event_s)
                if parsed is not None:
                    windows.add_dead_letter(*parsed)

    @app.timer(interval=5.0)
    async def export_consumer_lag():
        for tp in app.consumer.assignment():
            highwater, committed = app.consumer.highwater(tp), committed_offset(app, tp)
            if highwater is not None:
                worker_metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - (committed or 0)))

    if settings.alerts_enabled:
        register_alert_evaluator(app, settings, engine)
    return fold_batch


def notifier_hub(settings: Settings, engine: Engine) -> NotifierHub:
    """The notifiers of ``settings`` (``check_settings`` ran at the start; HttpNotifier refuses a webhook
    without a key in any case)."""
    notifiers = []
    if settings.alertmanager_url:
        notifiers.append(HttpNotifier("alertmanager", settings.alertmanager_url, "alertmanager"))
    if settings.alert_slack_webhook_url:
        notifiers.append(HttpNotifier("slack", settings.alert_slack_webhook_url, "slack"))
    if settings.alert_webhook_url:
        notifiers.append(HttpNotifier("webhook", settings.alert_webhook_url, "webhook",
                                      settings.alert_webhook_secret.encode()))
    return NotifierHub(notifiers, engine, RetryPolicy(attempts=settings.alert_notify_attempts),
                       allow_private_addresses=settings.webhook_allow_private_addresses)


def register_alert_evaluator(app: faust.App, settings: Settings, engine: Engine) -> None:
    check_settings(settings)  # at the start, not when this worker first evaluates (spoor worker checks earlier)
    alerts_topic = app.topic(settings.alerts_topic, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    rules = RulesFile(settings.alert_rules_path or DEFAULT_RULES)  # a broken file stops the start, saying why

    async def publish(key: bytes, value: bytes) -> None:
        await (await alerts_topic.send(key=key, value=value))  # acked by the broker

    state: dict = {}

    @app.on_before_shutdown.connect
    async def drain_notifications(_app, **_kwargs):
        """SIGTERM: give pending notifications a few seconds to go out (the rest stay in the outbox)."""
        evaluator = state.get("evaluator")
        if evaluator is not None:
            try:
                await asyncio.wait_for(evaluator.hub.idle(), settings.alert_drain_s)
            except (asyncio.TimeoutError, SQLAlchemyError):
                log.warning("stopping with alert notifications pending; the next evaluating worker sends them")
            await evaluator.hub.stop()

    def evaluates_alerts() -> bool:
        """One worker evaluates: the owner of the events topic's partition 0. (Faust's own leader
        election needs its leader topic, which the app disables.)"""
        return any(tp.topic == settings.events_topic and tp.partition == 0 for tp in app.consumer.assignment())

    @app.timer(interval=settings.alert_eval_interval_s)
    async def evaluate_alerts():
        if not evaluates_alerts():
            return
        if "evaluator" not in state:
            hub = notifier_hub(settings, engine)
            hub.start()  # sends what a previous process left pending in the outbox
            state["evaluator"] = AlertEvaluator(engine, rules, settings.topic_partitions, publish, hub)
        await state["evaluator"].tick()
