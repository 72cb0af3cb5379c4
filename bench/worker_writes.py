"""The worker's PostgreSQL writes, A against B: figures, not a test. Needs PostgreSQL (`deploy/stack.sh infra`)
on this machine (the backend's CPU time is read from /proc).

Simulated events are folded offline as the worker folds them (ProfileTracker with the analytics, a
dict for the Faust table), and each batch's writes (events, profiles, sessions, activity, triggers, and
with ``--interests`` the interest rows, as the worker writes them) are captured. Two fresh scratch databases
are migrated; ``--variant-sql`` runs on B only. The batches are then written to both with ``StreamWriter``,
alternating which goes first. Per event and side: wall time, the worker's CPU time (this process) and the
PostgreSQL backend's CPU time (/proc/<pid>/schedstat, nanoseconds), as totals and as medians over batches.
With no variant the run is an A/A: the ratio shows the noise.

    .venv/bin/python bench/worker_writes.py --interests --a-commit 391f7a8 --statements --digest --redeliver
    .venv/bin/python bench/worker_writes.py --variant-sql "ALTER TABLE sessions SET (fillfactor = 50)"

``--a-commit REV``: A writes with storage/writers.py, analytics_writer.py and interests.py as they were at REV
(both databases have today's migrations). ``--a-journeys-apart``: A's database is migrated to 0032 and A writes
each session as before 0033, a ``sessions`` row and a ``session_journeys`` row (two upserts), B as today (one).
``--statements``: backend CPU per statement kind, per event.
``--redeliver``: every batch is written twice (the second write must add nothing). ``--digest``: at the
end, a digest of every table the worker writes, A against B (``now()`` columns left out): same input, same
rows. ``--b-interests`` gives B's batches their interest rows and A none: the ratio is what interests cost.
After the writes, each side runs the segments runner's fold of the product rows its writer appended (migration
0031; none for a writer from before it) and prints its cost per event (``a_fold``, ``b_fold``); the digest
compares the product tables' weights to 6 decimals (a sum in another order).
"""

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import time
import types
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import orjson
import psycopg2.extensions
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from spoor.cli.simulate import simulate  # noqa: E402
from spoor.events import encode_events  # noqa: E402
from spoor.ingest.normalize import normalize  # noqa: E402
from spoor.settings import Settings  # noqa: E402
from spoor.storage import analytics_writer  # noqa: E402
from spoor.storage import writers as stream_writers  # noqa: E402
from spoor.storage.analytics_writer import write_analytics  # noqa: E402
from spoor.storage.interests import fold_product_deltas  # noqa: E402
from spoor.storage.migrate import downgrade, upgrade  # noqa: E402
from spoor.storage.writers import StreamWriter  # noqa: E402
from spoor.stream_processors.analytics_tracker import AnalyticsTracker  # noqa: E402
from spoor.stream_processors.app import analytics_rules  # noqa: E402
from spoor.stream_processors.interests import DAY_S, interest_batch  # noqa: E402
from spoor.stream_processors.profile_tracker import ProfileTracker  # noqa: E402
from tests.support.scratch_db import ScratchDatabase  # noqa: E402

UPSERTED = ("user_profiles", "sessions", "user_activity")


class DictTable(dict):
    async def changelog_durable(self) -> None:
        pass


def captured_batches(settings: Settings, users: int, batch_events: int) -> tuple[list[tuple], int]:
    """(rows, events, analytics output) of each batch the worker would write, and the event count."""
    received_at = datetime.now(timezone.utc)
    events = [normalize(m, received_at=received_at, source="bench") for m in simulate(users, seed=11)]
    records = [(0, encode_events([event])) for event in events]

    async def no_triggers(_triggers) -> None:
        pass

    analytics = AnalyticsTracker(analytics_rules(settings), settings.topic_partitions, no_triggers)
    tracker = ProfileTracker(DictTable(), None, settings.dedupe_window, None, analytics)
    captured = []

    async def capture(rows, batch_events_, derived, _erased=(), _merges=(), _links=()) -> None:
        captured.append((rows, batch_events_, derived))
        analytics.delivered_ok(derived)

    tracker._persist = capture  # the fold as the worker runs it; the writes are kept for later

    async def fold() -> None:
        for start in range(0, len(records), batch_events):
            await tracker.process(records[start:start + batch_events])

    asyncio.run(fold())
    return captured, len(events)


# Before migration 0033: a session's journey in a table of its own, upserted from the same rows.
JOURNEY_KEYS = ("user_key", "session_id", "opened_at", "events")
JOURNEY_ONLY = ("page_depth", "steps_beyond", "step_times", "page_type", "product_id", "dwell_s", "dwell_source",
                "search_term", "result_count", "cart_add_after")
SESSIONS_APART = analytics_writer._merge(
    "sessions", [c for c in analytics_writer.SESSION_COLUMNS if c not in JOURNEY_ONLY],
    ("user_key", "session_id", "opened_at"), "sessions.events <= excluded.events")
JOURNEYS_APART = analytics_writer._merge(
    "session_journeys", [*JOURNEY_KEYS, *JOURNEY_ONLY], ("user_key", "session_id", "opened_at"),
    "session_journeys.events <= excluded.events")


def write_analytics_apart(cursor, out, default) -> None:
    """``write_analytics`` as it was before migration 0033 (its rows, its statements), on a database at 0032."""
    def dump(rows) -> str:
        return orjson.dumps(rows, default=default).decode()

    if out.retired_sessions:
        retired = dump(out.retired_sessions)
        for table in ("sessions", "session_journeys"):
            cursor.execute(analytics_writer.DELETE_RETIRED.format(table=table), (retired,))
    if out.sessions:
        cursor.execute(SESSIONS_APART, (dump([{c: s[c] for c in s if c not in JOURNEY_ONLY} for s in out.sessions]),))
        journeys = [{c: s[c] for c in (*JOURNEY_KEYS, *JOURNEY_ONLY)} for s in out.sessions]
        cursor.execute(JOURNEYS_APART, (dump(journeys),))
    if out.activity:
        cursor.execute(analytics_writer.MERGE_ACTIVITY, (dump(out.activity),))
    if out.triggers:
        cursor.execute(analytics_writer.INSERT_TRIGGERS, (dump(out.triggers),))


WRITTEN_TABLES = ("events", "user_profiles", "sessions", "session_journeys", "user_activity", "behaviour_triggers",
                  "user_interests", "product_popularity", "product_affinity", "user_identities")
NOW_COLUMNS = ("updated_at", "persisted_at", "recorded_at")
ROOT = Path(__file__).resolve().parent.parent


def backend_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])  # time on CPU, all threads: one here


class StatementClock:
    """Backend CPU per statement kind: a psycopg2 cursor factory that reads /proc around each statement."""

    def __init__(self):
        self.ns: dict[str, int] = defaultdict(int)
        clock = self

        class Cursor(psycopg2.extensions.cursor):
            def _timed(self, sql, run):
                pid = self.connection.get_backend_pid()
                before = backend_cpu_ns(pid)
                try:
                    return run()
                finally:
                    clock.ns[clock.kind(sql)] += backend_cpu_ns(pid) - before

            def execute(self, sql, args=None):
                return self._timed(sql, lambda: super(Cursor, self).execute(sql, args))

            def executemany(self, sql, args):
                return self._timed(sql, lambda: super(Cursor, self).executemany(sql, args))

            def copy_expert(self, sql, file, size=8192):
                return self._timed(sql, lambda: super(Cursor, self).copy_expert(sql, file, size))

        self.cursor = Cursor

    @staticmethod
    def kind(sql) -> str:
        sql = sql.decode() if isinstance(sql, bytes) else str(sql)
        words = re.sub(r"\s+", " ", sql).strip().split(" ")
        return " ".join(words[:4])[:60]


def writer_at(rev: str):
    """``StreamWriter`` as storage/writers.py (with its analytics and interests writers) was at ``rev``."""
    tag = re.sub(r"\W", "_", rev)
    for name in ("interests", "analytics_writer", "writers"):
        source = subprocess.run(["git", "show", f"{rev}:storage/{name}.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
        for dep in ("interests", "analytics_writer"):
            source = source.replace(f"from spoor.storage.{dep} import", f"from writers_at_{tag}_{dep} import")
        module = types.ModuleType(f"writers_at_{tag}_{name}")
        sys.modules[module.__name__] = module
        exec(compile(source, f"{rev}:storage/{name}.py", "exec"), module.__dict__)
    return module.StreamWriter


# The product tables' sums: folded by the segments runner since migration 0031 (a sum in another order), so
# compared to 6 decimals of the logarithm (~1e-6 relative in the weight).
SUMMED = {"product_popularity": "product_id, category, price, round(weight::numeric, 6) AS weight, "
                                "round(trend::numeric, 6) AS trend, round(bought::numeric, 6) AS bought",
          "product_affinity": "product_id, neighbour_id, round(weight::numeric, 6) AS weight, "
                              "round(bought::numeric, 6) AS bought"}


def digests(engine) -> dict[str, str]:
    out = {}
    with engine.connect() as conn:
        for table in WRITTEN_TABLES:
            # the journey's columns of sessions (0033) are compared through session_journeys, on either side
            drop = "".join(f" - '{c}'" for c in NOW_COLUMNS + (JOURNEY_ONLY if table == "sessions" else ()))
            rows = f"SELECT {SUMMED[table]} FROM {table}" if table in SUMMED else f"SELECT * FROM {table}"
            out[table] = conn.execute(text(
                f"SELECT count(*) || ':' || coalesce(md5(string_agg(r, '|' ORDER BY r)), '') FROM "
                f"(SELECT (to_jsonb(t){drop})::text AS r FROM ({rows}) t) x")).scalar_one()
    return out


def fold(engine, pid: int) -> tuple[float, float, float, int]:
    """The segments runner's fold of the product rows the batches appended (migration 0031): wall, this
    process's CPU, the backend's CPU (s), and the delta rows folded. Nothing to fold for a writer from before."""
    backend, cpu, wall = backend_cpu_ns(pid), time.process_time(), time.perf_counter()
    folded = fold_product_deltas(engine)
    return (time.perf_counter() - wall, time.process_time() - cpu, (backend_cpu_ns(pid) - backend) / 1e9,
            folded.popularity_deltas + folded.affinity_deltas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=12_500, help="simulated shoppers (~7 events each)")
    parser.add_argument("--batch-events", type=int, default=3000)
    parser.add_argument("--variant-sql", default="", help="statements (separated by ;) run on database B")
    parser.add_argument("--interests", action="store_true", help="both write the batches' interests (the worker's)")
    parser.add_argument("--b-interests", action="store_true", help="B alone writes the batches' interests")
    parser.add_argument("--a-commit", default="", help="A writes with the writers of this commit")
    parser.add_argument("--a-journeys-apart", action="store_true",
                        help="A at migration 0032 writes sessions and journeys apart, as before 0033")
    parser.add_argument("--statements", action="store_true", help="backend CPU per statement kind")
    parser.add_argument("--redeliver", action="store_true", help="every batch written twice")
    parser.add_argument("--digest", action="store_true", help="compare the tables' rows at the end")
    args = parser.parse_args()
    settings = Settings()

    print(f"folding the events of {args.users} simulated shoppers ...", flush=True)
    batches, n = captured_batches(settings, args.users, args.batch_events)
    print(f"  {n} events in {len(batches)} batches", flush=True)
    half_lives = settings.interest_half_life_days * DAY_S, settings.trending_half_life_days * DAY_S
    recent = {}  # users' recent activity across batches, as the worker's profiles keep it
    interests = [interest_batch(events, *half_lives, recent=recent) for _rows, events, _derived in batches]
    run = uuid.uuid4().hex[:8]
    databases = [ScratchDatabase(settings.database_url, f"spoor_writes_{run}_{name}") for name in "ab"]
    clocks = [StatementClock(), StatementClock()]
    engines = []
    try:
        for side, (database, clock) in enumerate(zip(databases, clocks)):
            upgrade(database.url)
            if args.a_journeys_apart and side == 0:
                downgrade(database.url, "0032")
            engines.append(create_engine(database.url, pool_size=1, max_overflow=0,
                                         connect_args={"cursor_factory": clock.cursor}))
        if args.variant_sql:
            with engines[1].begin() as conn:
                for statement in filter(str.strip, args.variant_sql.split(";")):
                    conn.execute(text(statement))
        pids = []
        for engine in engines:
            with engine.connect() as conn:
                pids.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        for clock in clocks:
            clock.ns.clear()
        if args.a_commit:
            writers = [writer_at(args.a_commit)(engines[0]), StreamWriter(engines[1])]
        else:
            writers = [StreamWriter(engines[0]), StreamWriter(engines[1])]
        analytics_of = [write_analytics_apart if args.a_journeys_apart else write_analytics, write_analytics]
        totals = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # wall, worker CPU, backend CPU (s)
        per_batch = [[], []]  # (wall, worker, backend) us per event of each batch
        for index, (rows, events, derived) in enumerate(batches):
            for which in ((0, 1) if index % 2 == 0 else (1, 0)):
                with_interests = args.interests or (which and args.b_interests)
                options = {"interests": interests[index]} if with_interests and events else {}
                stream_writers.write_analytics = analytics_of[which]
                for _ in range(2 if args.redeliver else 1):
                    backend, cpu, wall = backend_cpu_ns(pids[which]), time.process_time(), time.perf_counter()
                    writers[which].write_batch(rows, events, derived, **options)
                    spent = (time.perf_counter() - wall, time.process_time() - cpu,
                             (backend_cpu_ns(pids[which]) - backend) / 1e9)
                    totals[which] = [t + s for t, s in zip(totals[which], spent)]
                    per_batch[which].append([s / max(len(events), 1) * 1e6 for s in spent])
        statement_ns = [dict(clock.ns) for clock in clocks]
        folds = [fold(engine, pid) for engine, pid in zip(engines, pids)]
        for name, engine in zip("AB", engines):
            with engine.connect() as conn:
                updates, hot = conn.execute(text(
                    "SELECT sum(n_tup_upd), sum(n_tup_hot_upd) FROM pg_stat_user_tables WHERE relname = ANY(:t)"),
                    {"t": list(UPSERTED)}).one()
                stored = conn.execute(text(  # the sessions' and journeys' partitions, with indexes and TOAST
                    "SELECT sum(pg_total_relation_size(oid)) FROM pg_class WHERE relkind = 'r' "
                    "AND (relname LIKE 'sessions%' OR relname LIKE 'session_journeys%')")).scalar_one()
            print(f"{name}: {hot / max(updates, 1):.0%} of updates HOT; sessions and journeys {stored / 2**20:.1f} MiB")
        same = None
        if args.digest:
            tables = [digests(engine) for engine in engines]
            same = tables[0] == tables[1]
            for table in WRITTEN_TABLES:
                mark = "same" if tables[0][table] == tables[1][table] else "DIFFERENT"
                print(f"  digest {table}: {tables[0][table]} {mark}")
    finally:
        for engine in engines:
            engine.dispose()
        for database in databases:
            database.drop()
    writes = n * (2 if args.redeliver else 1)
    if args.statements:
        print("backend CPU per statement kind, us per event written (A, B):")
        a_ns, b_ns = statement_ns
        for kind in sorted(set(a_ns) | set(b_ns), key=lambda k: -max(a_ns.get(k, 0), b_ns.get(k, 0))):
            print(f"  {a_ns.get(kind, 0) / writes / 1e3:7.1f} {b_ns.get(kind, 0) / writes / 1e3:7.1f}  {kind}")
    print()
    for i, measure in enumerate(("write", "worker_cpu", "backend_cpu")):
        a, b = totals[0][i] / writes * 1e6, totals[1][i] / writes * 1e6
        median_a = statistics.median(batch[i] for batch in per_batch[0])
        median_b = statistics.median(batch[i] for batch in per_batch[1])
        print(f"a_{measure}_us_per_event: {a:.1f} (median of batches {median_a:.1f})")
        print(f"b_{measure}_us_per_event: {b:.1f} (median of batches {median_b:.1f})")
        print(f"b_vs_a_{measure}: {b / a:.3f} (medians {median_b / median_a:.3f})")
    for name, (wall, cpu, backend, rows) in zip("ab", folds):
        print(f"{name}_fold: {rows} delta rows; wall {wall / writes * 1e6:.1f}, runner CPU {cpu / writes * 1e6:.1f}, "
              f"backend CPU {backend / writes * 1e6:.1f} us per event written")
    if same is not None:
        print(f"digests_equal: {same}")


if __name__ == "__main__":
    main()
