"""The long-running process ``spoor segments run``, in the bounded turns of ``spoor.turn_loop``.

Every step of a turn is idempotent, so a turn retried after a PostgreSQL or Kafka failure repeats
nothing visible. A segment that fails because of itself (its definition, or its own statement) does
not fail the turn: it is recorded in ``segments.error``, counted
(``spoor_segments_refresh_failures_total``), logged when its reason changes, and the other segments
go on (``membership``).
"""

import logging
import threading
import time
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import Engine

from spoor.segments import attribution, membership, segment_metrics
from spoor.segments.membership import SegmentStore, utcnow
from spoor.settings import Settings
from spoor.storage.interests import fold_product_deltas
from spoor.storage.retention import RetentionTurn
from spoor.topics import create_producer, create_segment_topics
from spoor.turn_loop import Heartbeat, paced_by, run_turns, stop_event

log = logging.getLogger(__name__)


def run_segments(settings: Settings, engine: Engine, stop: threading.Event | None = None) -> None:
    """Incremental pass every ``segments_poll_s``, a full recompute every ``segments_full_recompute_s``,
    and publication of enter/exit records to ``segments_topic``."""
    stop = stop or stop_event()
    create_segment_topics(settings)
    producer = create_producer(settings, "spoor-segments")
    SegmentStore(engine).install_builtins()
    last_full = [float("-inf")]
    last_population = [float("-inf")]
    # Each statement of a turn is followed by its share of idle time: PostgreSQL is loaded evenly
    # instead of a whole core in bursts while the worker needs it.
    heartbeat = Heartbeat()
    pace = paced_by(settings.segments_max_busy_share, stop, heartbeat)
    failures = SegmentFailures()
    retention = RetentionTurn(engine, settings, pace)  # every retention_interval_s (storage/retention.py)

    def turn() -> None:
        retention()
        fold_products(engine)  # before the pass, whose lists and interest profiles read the product tables
        if time.monotonic() - last_full[0] >= settings.segments_full_recompute_s:
            started = time.monotonic()
            failed: dict[str, str] = {}
            changes = membership.full_recompute(engine, utcnow(), pace=pace, failed=failed)
            _count(changes)
            failures.report(failed, changes, every_active=True)
            segment_metrics.PASSES.labels("full").inc()
            log.info("full recompute in %.1f s", time.monotonic() - started)
            last_full[0] = time.monotonic()
        # RFM segments are recomputed for everyone, so at most every segments_population_refresh_s.
        population_due = time.monotonic() - last_population[0] >= settings.segments_population_refresh_s
        # One scan for the users changed since the membership pass's cursor and the attribution pass's.
        changes = membership.Changes(engine, ("incremental", "attribution"), settings.segments_change_overlap_s)
        started = time.monotonic()
        result = membership.incremental_pass(engine, utcnow(), settings.segments_change_overlap_s,
                                             refresh_population=population_due, pace=pace, changes=changes)
        pass_s = time.monotonic() - started
        if population_due and result["changed_users"]:
            last_population[0] = time.monotonic()
        segment_metrics.PASSES.labels("incremental").inc()
        segment_metrics.CHANGED_USERS.inc(result["changed_users"])
        _count(result["segments"])
        failures.report(result["failed"], result["segments"])
        started = time.monotonic()
        attributed = attribution.attribution_pass(engine, timedelta(days=settings.attribution_window_days),
                                                  settings.segments_change_overlap_s, pace=pace, changes=changes)
        if attributed["people"]:
            log.info("attribution: orders of %d people attributed again in %.1f s", attributed["people"],
                     time.monotonic() - started)
        started = time.monotonic()
        published = membership.publish_backlog(engine, producer, settings.segments_topic,
                                               budget_s=settings.segments_poll_s, pace=pace)
        publish_s = time.monotonic() - started
        segment_metrics.PUBLISHED.inc(published)
        if result["changed_users"] or published:
            log.info("incremental pass: %d changed users in %.1f s%s, %d transitions published in %.1f s",
                     result["changed_users"], pass_s, " (with RFM refresh)" if population_due else "",
                     published, publish_s)

    try:
        run_turns("segments", turn, settings.segments_poll_s, stop, settings.admin_api_host, settings.segments_web_port,
              heartbeat)
    finally:
        producer.close()


def fold_products(engine: Engine) -> None:
    """Fold the product rows the workers appended into ``product_popularity`` and ``product_affinity``
    (storage/interests.py), with its metrics."""
    folded = fold_product_deltas(engine)
    segment_metrics.FOLD_SECONDS.observe(folded.seconds)
    for table, rows in (("product_popularity", folded.popularity_deltas), ("product_affinity", folded.affinity_deltas)):
        segment_metrics.DELTAS_WAITING.labels(table).set(rows)
        segment_metrics.DELTAS_FOLDED.labels(table).inc(rows)
    if folded.seconds > 1.0:
        log.info("product deltas folded in %.1f s: %d popularity rows into %d, %d affinity rows into %d",
                 folded.seconds, folded.popularity_deltas, folded.popularity_rows, folded.affinity_deltas,
                 folded.affinity_rows)


class SegmentFailures:
    """Segments whose last refresh failed because of themselves: counted on every failure, logged when
    a segment starts failing, fails for another reason, or works again."""

    def __init__(self):
        self.reasons: dict[str, str] = {}

    def report(self, failed: dict[str, str], refreshed: Iterable[str], every_active: bool = False) -> None:
        """``every_active``: the pass tried every active segment (so a paused one is forgotten)."""
        if every_active:
            for name in set(self.reasons) - set(failed) - set(refreshed):
                del self.reasons[name]
        for name, reason in failed.items():
            segment_metrics.SEGMENT_FAILURES.inc()
            if self.reasons.get(name) != reason:
                log.warning("segment %s skipped, the others go on: %s", name, reason)
            self.reasons[name] = reason
        for name in refreshed:
            if self.reasons.pop(name, None) is not None:
                log.info("segment %s refreshed again", name)
        segment_metrics.FAILING_SEGMENTS.set(len(self.reasons))


def _count(changes: dict[str, tuple[int, int]]) -> None:
    for entered, left in changes.values():
        segment_metrics.TRANSITIONS.labels("enter").inc(entered)
        segment_metrics.TRANSITIONS.labels("exit").inc(left)
