"""The worker's PostgreSQL writes, A against B: figures, not a test. Needs PostgreSQL (`deploy/stack.sh infra`).

Simulated events are folded offline as the worker folds them (ProfileTracker with the analytics, a
dict for the Faust table), and each batch's writes (events, profiles, sessions, activity, triggers)
are captured. Two fresh scratch databases are migrated; ``--variant-sql`` runs on B only. The batches
are then written to both with ``StreamWriter``, alternating which goes first, and the time per event
is compared. With no variant the run is an A/A: the ratio shows the noise.

    .venv/bin/python bench/worker_writes.py --variant-sql "ALTER TABLE sessions SET (fillfactor = 50)"

``--b-interests`` gives B's batches their interest rows (issue 22: user_interests, product_popularity,
product_affinity), as the worker writes them; A writes without: the ratio is what interests cost.
"""

import argparse
import asyncio
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from spoor.cli.simulate import simulate  # noqa: E402
from spoor.events import encode_events  # noqa: E402
from spoor.ingest.normalize import normalize  # noqa: E402
from spoor.settings import Settings  # noqa: E402
from spoor.storage.migrate import upgrade  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=12_500, help="simulated shoppers (~7 events each)")
    parser.add_argument("--batch-events", type=int, default=3000)
    parser.add_argument("--variant-sql", default="", help="statements (separated by ;) run on database B")
    parser.add_argument("--b-interests", action="store_true", help="B also writes the batches' interests")
    args = parser.parse_args()
    settings = Settings()

    print(f"folding the events of {args.users} simulated shoppers ...", flush=True)
    batches, n = captured_batches(settings, args.users, args.batch_events)
    print(f"  {n} events in {len(batches)} batches", flush=True)
    run = uuid.uuid4().hex[:8]
    databases = [ScratchDatabase(settings.database_url, f"spoor_writes_{run}_{name}") for name in "ab"]
    engines = []
    try:
        for name, database in zip("ab", databases):
            upgrade(database.url)
            engines.append(create_engine(database.url))
        if args.variant_sql:
            with engines[1].begin() as conn:
                for statement in filter(str.strip, args.variant_sql.split(";")):
                    conn.execute(text(statement))
        writers = [StreamWriter(engine) for engine in engines]
        seconds = [0.0, 0.0]
        half_lives = settings.interest_half_life_days * DAY_S, settings.trending_half_life_days * DAY_S
        recent = {}  # users' recent activity across batches, as the worker's profiles keep it
        for index, (rows, events, derived) in enumerate(batches):
            for which in ((0, 1) if index % 2 == 0 else (1, 0)):
                started = time.perf_counter()
                options = {"interests": interest_batch(events, *half_lives, recent=recent)} if which and args.b_interests else {}
                writers[which].write_batch(rows, events, derived, **options)
                seconds[which] += time.perf_counter() - started
        for name, engine, spent in zip("AB", engines, seconds):
            with engine.connect() as conn:
                updates, hot = conn.execute(text(
                    "SELECT sum(n_tup_upd), sum(n_tup_hot_upd) FROM pg_stat_user_tables WHERE relname = ANY(:t)"),
                    {"t": list(UPSERTED)}).one()
            print(f"{name}: {spent / n * 1e6:.1f} us/event written, {hot / max(updates, 1):.0%} of updates HOT")
    finally:
        for engine in engines:
            engine.dispose()
        for database in databases:
            database.drop()
    print()
    print(f"a_write_us_per_event: {seconds[0] / n * 1e6:.1f}")
    print(f"b_write_us_per_event: {seconds[1] / n * 1e6:.1f}")
    print(f"b_vs_a: {seconds[1] / seconds[0]:.3f}")


if __name__ == "__main__":
    main()
