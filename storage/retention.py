"""Retention: how long each store keeps rows, enforced by dropping whole partitions (docs/privacy.md#retention).

Every store is partitioned by a time its rows never change: ``events`` (one partition a month, on ``event_time``)
and ``dead_letters`` (one a day, on ``received_at``) by migration 0027; ``sessions`` (on ``opened_at``, the start its
row was first keyed with; its journey is in its row since migration 0033), ``campaign_deliveries`` (on
``triggered_at``, the episode's time, with ``campaign_attempts``) and ``order_attribution`` (on ``converted_at``),
a month each, by migration 0030.
A store's companions are partitioned on the same time with the same bounds and go with it. A run, per store:

1. rows waiting in the store's DEFAULT partitions (a row older than every partition, or later than those made
   ahead) are deleted when past retention, else moved into their own partition, made for them;
2. the partitions of this month (day) and the next ``ahead`` ones are made, so a write never needs the default
   partition in normal operation;
3. every partition whose whole range is older than the retention (and the store's ``margin``: the time its rows
   can still be updated after their partition time, e.g. a session's inactivity and lateness windows) is
   dropped (``DROP TABLE``: no row-by-row delete, no dead tuples, the space goes back at once); a companion's
   first, and a partition that a companion's foreign key points at is detached before it is dropped.

Every DDL statement waits at most ``LOCK_TIMEOUT`` for its lock: a long reader of the table makes the job give
up on that store until the next run (counted), instead of stalling the worker's writes queued behind it.
Two runs never overlap (an advisory lock): the second one skips. Everything here is idempotent.
"""

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from prometheus_client import Counter, Gauge
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from spoor.settings import Settings
from spoor.storage import StorageError

log = logging.getLogger(__name__)

LOCK_TIMEOUT = "2s"
DEFAULT_BLOCKS = 1024  # pages (8 MiB) of a default partition per delete
RUN_LOCK = 0x5370_6F72_5265_74  # pg_advisory_lock key of a run ("SporRet")

# Metric names (docs/operations.md#retention).
PARTITIONS_CREATED = Counter("spoor_retention_partitions_created_total", "Partitions made by the job.", ["store"])
PARTITIONS_DROPPED = Counter("spoor_retention_partitions_dropped_total",
                             "Partitions dropped because their whole range was past retention.", ["store"])
BYTES_DROPPED = Counter("spoor_retention_bytes_dropped_total", "Bytes (table and indexes) of dropped partitions.",
                        ["store"])
ROWS_DELETED = Counter("spoor_retention_rows_deleted_total",
                       "Rows past retention found in a default partition, deleted one page range at a time.", ["store"])
ROWS_MOVED = Counter("spoor_retention_rows_moved_total",
                     "Rows moved from a default partition into the partition made for them.", ["store"])
FAILURES = Counter("spoor_retention_failures_total",
                   "Runs that could not finish a store (a lock not granted in time, PostgreSQL unreachable); "
                   "the next run tries again.", ["store"])
ROWS = Gauge("spoor_retention_rows", "Rows in the store (PostgreSQL's estimate, as of its last ANALYZE).", ["store"])
BYTES = Gauge("spoor_retention_bytes", "Bytes of the store, its indexes and partitions included.", ["store"])
PARTITIONS = Gauge("spoor_retention_partitions", "Partitions of the store (its default partition included).",
                   ["store"])
DEFAULT_ROWS = Gauge("spoor_retention_default_rows",
                     "Rows left in the store's default partition after a run (no partition of theirs yet: "
                     "later than the partitions made ahead).", ["store"])
OLDEST_AGE = Gauge("spoor_retention_oldest_age_seconds",
                   "Age of the store's oldest partition (the start of its range), or of its oldest row.", ["store"])
LAST_RUN = Gauge("spoor_retention_last_run_timestamp_seconds", "Unix time of the job's last completed run.")


class RetentionError(StorageError):
    """The store cannot be handled as configured (not partitioned as the job expects)."""


# -- partition arithmetic (pure) ---------------------------------------------------------------------------

UNITS = ("day", "month")


def unit_start(moment: datetime, unit: str) -> datetime:
    """The start (UTC) of the day or month holding ``moment``."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: partitions are cut in UTC")
    day = moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown partition unit {unit!r}")


def next_start(start: datetime, unit: str, steps: int = 1) -> datetime:
    """The start of the ``steps``-th day or month after ``start`` (a start itself)."""
    if unit == "day":
        return start + timedelta(days=steps)
    months = start.year * 12 + start.month - 1 + steps
    return start.replace(year=months // 12, month=months % 12 + 1)


def partition_name(table: str, start: datetime, unit: str) -> str:
    return f"{table}_p{start:%Y%m%d}" if unit == "day" else f"{table}_p{start:%Y%m}"


def parse_partition_name(table: str, name: str, unit: str) -> datetime | None:
    """The start of the range named by ``name``, or None for a name the job did not make."""
    digits = 8 if unit == "day" else 6
    match = re.fullmatch(re.escape(table) + r"_p(\d{%d})" % digits, name)
    if not match:
        return None
    try:
        return datetime.strptime(match[1], "%Y%m%d" if unit == "day" else "%Y%m").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def cutoff(now: datetime, days: int) -> datetime:
    """Rows older than this are past retention."""
    if days < 1:
        raise ValueError(f"retention must be at least one day, not {days}")
    return now - timedelta(days=days)


def expired(start: datetime, unit: str, now: datetime, days: int, margin: timedelta = timedelta(0)) -> bool:
    """A partition goes once its whole range is past retention, and past the time its rows can still be updated
    (``margin`` after their partition time): its end is at or before the cutoff less the margin."""
    return next_start(start, unit) <= cutoff(now, days) - margin


def starts_ahead(now: datetime, unit: str, ahead: int) -> list[datetime]:
    """This unit's start and the next ``ahead`` ones: the partitions that must exist."""
    first = unit_start(now, unit)
    return [next_start(first, unit, step) for step in range(ahead + 1)]


# -- stores --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Store:
    name: str
    column: str
    days: int
    unit: str
    ahead: int = 0
    # Tables partitioned on the same time with the same bounds, whose rows go with the store's (their partitions
    # are made with its, dropped before its); ``referenced``: a companion's foreign key points at the store.
    companions: tuple[str, ...] = ()
    referenced: bool = False
    margin: timedelta = timedelta(0)  # how long after its partition time a row can still be updated
    fillfactor: int | None = None  # of the partitions (upserted rows: room for HOT updates, migrations 0012, 0032)

    @property
    def partitioned(self) -> bool:
        return True

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.name, *self.companions)


def stores(settings: Settings) -> list[Store]:
    """Each store with its retention. Partitions made ahead: 3 months, 7 days of dead letters (the collector
    admits events at most ``max_future_event_s`` ahead, a session opens at an event's time, an episode's time is
    at most the enqueue's: a write never reaches past them). A session's row is rewritten while the worker keeps
    it: until its last event is older than the user's latest by the inactivity gap (or the lateness, for a
    client session) and the lateness together; that is its margin."""
    session_margin = timedelta(seconds=max(settings.session_inactivity_s, settings.session_lateness_s)
                               + settings.session_lateness_s)
    return [Store("events", "event_time", settings.retention_events_days, "month", ahead=3),
            Store("dead_letters", "received_at", settings.retention_dead_letters_days, "day", ahead=7),
            Store("sessions", "opened_at", settings.retention_sessions_days, "month", ahead=3,
                  margin=session_margin, fillfactor=50),
            Store("campaign_deliveries", "triggered_at", settings.retention_deliveries_days, "month", ahead=3,
                  companions=("campaign_attempts",), referenced=True),
            Store("order_attribution", "converted_at", settings.retention_order_attribution_days, "month", ahead=3)]


@dataclass
class StoreReport:
    store: str
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    rows_deleted: int = 0
    rows_moved: int = 0
    error: str | None = None


Pace = Callable[[float], None]


def _no_pace(_step_s: float) -> None:
    pass


def run_retention(engine: Engine, settings: Settings, now: datetime | None = None,
                  pace: Pace = _no_pace) -> list[StoreReport] | None:
    """One run over every store; None when another run holds the lock. A store that fails (a lock not granted
    within ``LOCK_TIMEOUT``, say) is reported and counted, and the others go on."""
    now = now or datetime.now(timezone.utc)
    with engine.connect() as lock_conn:
        if not lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": RUN_LOCK}).scalar_one():
            log.info("retention: another run holds the lock; skipped")
            return None
        try:
            reports = []
            for store in stores(settings):
                report = StoreReport(store.name)
                try:
                    _run_partitioned(engine, store, now, report, pace)
                    observe(engine, store, now)
                except (SQLAlchemyError, RetentionError) as err:  # a lock timeout, a lost connection: next run
                    FAILURES.labels(store.name).inc()
                    cause = getattr(err, "orig", None) or err
                    report.error = (str(cause).strip().splitlines() or [type(err).__name__])[0]
                    log.warning("retention of %s not finished, retried next run: %s", store.name, report.error)
                reports.append(report)
            if not any(r.error for r in reports):
                LAST_RUN.set(time.time())
            return reports
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": RUN_LOCK})


def _begin(engine: Engine):
    conn = engine.connect()
    conn.begin()
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    return conn


def table_partitions(conn: Connection, table: str, unit: str) -> tuple[dict[datetime, str], bool]:
    """The table's partitions the job made (start -> name), and whether its default partition exists."""
    names = conn.execute(text(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = CAST(:t AS regclass)"), {"t": table}).scalars().all()
    if not names and not conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = CAST(:t AS regclass))"),
            {"t": table}).scalar_one():
        raise RetentionError(f"{table} is not a partitioned table: run `spoor migrate` (migrations 0027, 0030)")
    found = {}
    for name in names:
        start = parse_partition_name(table, name, unit)
        if start is not None:
            found[start] = name
    return found, f"{table}_default" in names


def partitions(conn: Connection, store: Store) -> tuple[dict[datetime, str], bool]:
    """The store's own partitions the job made (start -> name), and whether its default partition exists."""
    return table_partitions(conn, store.name, store.unit)


def _run_partitioned(engine: Engine, store: Store, now: datetime, report: StoreReport, pace: Pace) -> None:
    limit = cutoff(now, store.days) - store.margin
    with engine.connect() as conn:
        existing = {table: table_partitions(conn, table, store.unit) for table in store.tables}
    horizon = starts_ahead(now, store.unit, store.ahead)
    wanted = set(horizon)
    for table in reversed(store.tables):  # a companion's rows first: a foreign key's cascade finds none of them
        if existing[table][1]:
            report.rows_deleted += _delete_from_default(engine, f"{table}_default", store.column, limit, pace)
    for table in store.tables:
        if existing[table][1]:
            with engine.connect() as conn:
                waiting = conn.execute(text(f"SELECT DISTINCT date_trunc('{store.unit}', {store.column}, 'UTC') "
                                            f"FROM {table}_default")).scalars().all()
            wanted |= {unit_start(start, store.unit) for start in waiting if start <= horizon[-1]}
    every = set().union(*(set(parts) for parts, _default in existing.values()))
    for start in sorted(wanted):
        missing = [t for t in store.tables if start not in existing[t][0]]
        if not missing or next_start(start, store.unit) <= limit:
            continue  # there, or expired: its rows in the default partitions are already deleted
        started = time.monotonic()
        report.rows_moved += _create_partitions(engine, store, start, missing,
                                                {t for t in missing if existing[t][1]})
        report.created += [partition_name(t, start, store.unit) for t in missing]
        PARTITIONS_CREATED.labels(store.name).inc(len(missing))
        pace(time.monotonic() - started)
    for start in sorted(every):
        if next_start(start, store.unit) > limit:
            continue
        started = time.monotonic()
        names = [existing[t][0][start] for t in reversed(store.tables) if start in existing[t][0]]
        with _begin(engine) as conn:
            size = conn.execute(text("SELECT sum(pg_total_relation_size(CAST(p AS regclass)))::bigint "
                                     "FROM unnest(CAST(:p AS text[])) p"), {"p": names}).scalar_one()
            for name in names:  # companions first
                if name == existing[store.name][0].get(start) and store.referenced:
                    conn.execute(text(f"ALTER TABLE {store.name} DETACH PARTITION {name}"))
                conn.execute(text(f"DROP TABLE {name}"))
            conn.commit()
        report.dropped += list(reversed(names))
        PARTITIONS_DROPPED.labels(store.name).inc(len(names))
        BYTES_DROPPED.labels(store.name).inc(size)
        pace(time.monotonic() - started)
    ROWS_DELETED.labels(store.name).inc(report.rows_deleted)
    ROWS_MOVED.labels(store.name).inc(report.rows_moved)
    if report.created or report.dropped or report.rows_deleted:
        log.info("retention of %s: made %s, dropped %s, %d rows past retention deleted from its default partitions",
                 store.name, report.created or "none", report.dropped or "none", report.rows_deleted)


STORED_COLUMNS = ("SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
                  "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped AND attgenerated = ''")


def _create_partitions(engine: Engine, store: Store, start: datetime, tables: list[str], defaults: set[str]) -> int:
    """Makes the partitions of ``tables`` (the store and its companions) for ``start`` beside their tables, moves
    their rows out of the default partitions (``defaults``), then attaches them: ATTACH takes a lock that lets the
    worker's writes and the readers go on (CREATE ... PARTITION OF would block them); the CHECK spares it a scan
    of the new partition. Rows leave a companion's default partition before the store's, so a foreign key's
    cascade finds none of them, and the store's partition is attached first, so the companion's key finds its
    rows. Returns the rows moved."""
    end = next_start(start, store.unit)
    bounds = {"a": start, "b": end}
    storage = f" WITH (fillfactor = {store.fillfactor})" if store.fillfactor else ""
    moved = 0
    with _begin(engine) as conn:
        for table in tables:
            conn.execute(text(f"CREATE TABLE {partition_name(table, start, store.unit)} (LIKE {table} INCLUDING "
                              f"DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE){storage}"))
        for table in reversed(tables):
            if table in defaults:
                columns = conn.execute(text(STORED_COLUMNS), {"t": table}).scalar_one()
                moved += conn.execute(text(
                    f"WITH moved AS (DELETE FROM {table}_default WHERE {store.column} >= :a AND {store.column} < :b "
                    f"RETURNING {columns}) INSERT INTO {partition_name(table, start, store.unit)} ({columns}) "
                    f"SELECT {columns} FROM moved"), bounds).rowcount
        for table in tables:
            name = partition_name(table, start, store.unit)
            conn.execute(text(f"ALTER TABLE {name} ADD CONSTRAINT {name}_range "
                              f"CHECK ({store.column} >= :a AND {store.column} < :b)").bindparams(**bounds))
            conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} "
                              f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"))
            conn.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range"))
        conn.commit()
    return moved


def _delete_from_default(engine: Engine, default: str, column: str, limit: datetime, pace: Pace) -> int:
    """Deletes the rows of a default partition older than ``limit``, one range of ``DEFAULT_BLOCKS`` pages at a
    time (a TID range scan): each page is read once however many rows go (a replayed data set may have put
    millions there), and each transaction stays short."""
    with engine.connect() as conn:
        pages = conn.execute(text("SELECT pg_relation_size(CAST(:t AS regclass)) / current_setting('block_size')::int"),
                             {"t": default}).scalar_one()
    statement = text(f"DELETE FROM {default} WHERE ctid >= CAST(:a AS tid) AND ctid < CAST(:b AS tid) "
                     f"AND {column} < :limit")
    deleted = 0
    for first in range(0, pages, DEFAULT_BLOCKS):
        started = time.monotonic()
        with _begin(engine) as conn:
            deleted += conn.execute(statement, {"a": f"({first},0)", "b": f"({first + DEFAULT_BLOCKS},0)",
                                                "limit": limit}).rowcount
            conn.commit()
        pace(time.monotonic() - started)
    return deleted


# -- what is held -------------------------------------------------------------------------------------------

def observe(engine: Engine, store: Store, now: datetime) -> dict:
    """The store's size (its companions' included), partitions and oldest data, set on the gauges and returned."""
    with engine.connect() as conn:
        size, rows = conn.execute(text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0), "
            "coalesce(sum(greatest(c.reltuples, 0)) FILTER (WHERE c.relkind <> 'p' AND c.relname = :t "
            "OR c.relname LIKE :t || '\\_%'), 0) "  # a parent counts them all; the rows are the store's own
            "FROM pg_class c WHERE c.oid = ANY(CAST(:tables AS regclass[])) OR c.oid IN "
            "(SELECT inhrelid FROM pg_inherits WHERE inhparent = ANY(CAST(:tables AS regclass[])))"),
            {"t": store.name, "tables": list(store.tables)}).one()
        state = {"store": store.name, "retention_days": store.days, "bytes": int(size), "rows_estimate": int(rows)}
        existing, has_default = partitions(conn, store)
        oldest = min(existing) if existing else None
        default_rows = conn.execute(text(
            f"SELECT count(*) FROM {store.name}_default")).scalar_one() if has_default else 0
        state.update(unit=store.unit, partitions=len(existing) + has_default, default_rows=default_rows,
                     oldest_partition=existing.get(oldest))
        if store.companions:
            state["with"] = list(store.companions)
        if store.margin:
            state["margin_s"] = int(store.margin.total_seconds())
        PARTITIONS.labels(store.name).set(state["partitions"])
        DEFAULT_ROWS.labels(store.name).set(default_rows)
    state["oldest_age_s"] = round((now - oldest).total_seconds()) if oldest else None
    ROWS.labels(store.name).set(state["rows_estimate"])
    BYTES.labels(store.name).set(state["bytes"])
    OLDEST_AGE.labels(store.name).set(state["oldest_age_s"] or 0)
    return state


class RetentionTurn:
    """The job inside a runner's turn: runs when ``retention_interval_s`` has passed since the last run that
    completed (at the first turn too, so a restarted stack makes its partitions before anything else). A run
    that could not finish is tried again ``RETRY_S`` later; it never fails the runner's turn, whose own work
    goes on."""

    RETRY_S = 60.0

    def __init__(self, engine: Engine, settings: Settings, pace: Pace = _no_pace):
        self.engine, self.settings, self.pace = engine, settings, pace
        self.due = float("-inf")

    def __call__(self) -> list[StoreReport] | None:
        if time.monotonic() < self.due:
            return None
        try:
            reports = run_retention(self.engine, self.settings, pace=self.pace)
        except SQLAlchemyError as err:  # PostgreSQL unreachable: the turn's own work will say so too
            FAILURES.labels("all").inc()
            log.warning("retention run failed, retried in %.0f s: %s", self.RETRY_S, err)
            reports = None
        done = reports is not None and not any(r.error for r in reports)
        self.due = time.monotonic() + (self.settings.retention_interval_s if done else self.RETRY_S)
        return reports
