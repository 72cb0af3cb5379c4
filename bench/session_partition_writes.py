"""The sessions and journeys upserts, unpartitioned (A: the schema before migration 0030, keyed (user_key,
session_id)) against partitioned by month of opened_at (B: migration 0030, keyed with opened_at): figures, not a
test. Needs PostgreSQL (`deploy/stack.sh infra`) on this machine (the backend's CPU time is read from /proc).

Simulated shoppers' events are folded as the worker folds them (AnalyticsTracker); each batch's session rows
(with their journeys) are captured, most of them rewrites of sessions already stored, as in the worker. Two
scratch databases: A migrated to 0029 (sessions as before), B to the heads with the retention job's partitions.
The batches are written to both with the same statements but for the key (storage/analytics_writer.py's
``_merge``), alternating which goes first. Per session row and side: the PostgreSQL backend's CPU time
(/proc/<pid>/schedstat) and the wall time, medians over batches and totals.

    .venv/bin/python bench/session_partition_writes.py [--users 3000] [--batches 60] [--rounds 3] [--same]
"""

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spoor.events import Event, EventKind  # noqa: E402
from spoor.settings import Settings  # noqa: E402
from spoor.storage import analytics_writer as aw  # noqa: E402
from spoor.storage.migrate import HERE, upgrade  # noqa: E402
from spoor.storage.retention import run_retention  # noqa: E402
from spoor.stream_processors.analytics_tracker import AnalyticsTracker  # noqa: E402
from spoor.stream_processors.behaviour import AnalyticsRules  # noqa: E402
from tests.support.scratch_db import ScratchDatabase  # noqa: E402

KINDS = [EventKind.PAGE_VIEW, EventKind.PRODUCT_VIEW, EventKind.PRODUCT_VIEW, EventKind.CART_ADD]


async def _nothing(*_args):
    pass


def batches(users: int, count: int, per_batch: int, seed: int = 7) -> list[list[dict]]:
    """``count`` batches of session rows: each batch, ``per_batch`` events of random users (a user's event a few
    minutes after their previous one, so most rows rewrite a stored session), folded as the worker does."""
    rng = random.Random(seed)
    start = datetime.now(timezone.utc).replace(day=2, hour=0, minute=0, second=0, microsecond=0)
    clock = {f"u{i}": start + timedelta(seconds=rng.uniform(0, 3600)) for i in range(users)}
    states: dict[str, bytes | None] = {}
    out, n = [], 0
    for _ in range(count):
        tracker = AnalyticsTracker(AnalyticsRules(), 1, _nothing)
        per_user: dict[str, list[Event]] = {}
        for _ in range(per_batch):
            user = f"u{rng.randrange(users)}"
            clock[user] += timedelta(seconds=rng.expovariate(1 / 240))
            n += 1
            per_user.setdefault(user, []).append(Event(
                event_id=f"e{n}", kind=rng.choice(KINDS), name="x", user_key=user, event_time=clock[user],
                received_at=clock[user], source="web", page_url=f"https://shop.example/p{rng.randrange(500)}",
                product_id=f"p{rng.randrange(500)}", session_id=None))
        for user, events in per_user.items():
            value = tracker.fold(user, b"{}", states.get(user), events, events)
            states[user] = value.split(b"\n", 2)[2]
        out.append(tracker.take_output().sessions)
    return out


def backend_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--events", type=int, default=1500, help="events per batch")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every batch (fresh databases each)")
    parser.add_argument("--same", action="store_true", help="B as A (an A/A run: the ratio shows the noise)")
    args = parser.parse_args()
    settings = Settings()
    data = batches(args.users, args.batches, args.events)
    rows = sum(len(b) for b in data)
    old = {"A": True, "B": args.same}  # the schema before migration 0030
    keys = {side: ("user_key", "session_id") + (() if old[side] else ("opened_at",)) for side in "AB"}
    columns = {side: [c for c in aw.SESSION_COLUMNS if c != "opened_at" or not old[side]] for side in "AB"}
    journey_columns = {side: [c for c in aw.JOURNEY_COLUMNS if c != "opened_at" or not old[side]] for side in "AB"}
    statements = {side: (aw._merge("sessions", columns[side], keys[side], "sessions.events <= excluded.events"),
                         aw._merge("session_journeys", journey_columns[side], keys[side],
                                   "session_journeys.events <= excluded.events"))
                  for side in "AB"}
    cpu = {"A": [], "B": []}
    wall = {"A": [], "B": []}
    for round_ in range(args.rounds):
        run = uuid.uuid4().hex[:8]
        dbs = {side: ScratchDatabase(settings.database_url, f"spoor_bench_{run}_{side.lower()}") for side in "AB"}
        try:
            from alembic import command
            from alembic.config import Config
            for side, db in dbs.items():
                upgrade(db.url)
                if old[side]:
                    config = Config(str(HERE / "alembic.ini"))
                    config.set_main_option("script_location", str(HERE / "migrations"))
                    config.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
                    command.downgrade(config, "0029")  # 0030 only: sessions as before
                else:
                    engine = create_engine(db.url)
                    run_retention(engine, settings.model_copy(update={"database_url": db.url}))
                    engine.dispose()
            engines = {side: create_engine(db.url) for side, db in dbs.items()}
            conns = {side: engines[side].raw_connection() for side in "AB"}
            pids = {}
            for side, conn in conns.items():
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    pids[side] = cur.fetchone()[0]
            for i, batch in enumerate(data):
                sessions = orjson.dumps(batch, default=str).decode()
                journeys = orjson.dumps([r["journey"] for r in batch], default=str).decode()
                for side in ("AB" if (i + round_) % 2 == 0 else "BA"):
                    conn = conns[side]
                    before_cpu, before = backend_cpu_ns(pids[side]), time.perf_counter()
                    with conn.cursor() as cur:
                        cur.execute(statements[side][0], (sessions,))
                        cur.execute(statements[side][1], (journeys,))
                    conn.commit()
                    cpu[side].append((backend_cpu_ns(pids[side]) - before_cpu) / len(batch) / 1000)
                    wall[side].append((time.perf_counter() - before) / len(batch) * 1e6)
            for side in "AB":
                with conns[side].cursor() as cur:
                    cur.execute("SELECT count(*) FROM sessions")
                    print(f"round {round_ + 1} {side}: {cur.fetchone()[0]} sessions stored")
                conns[side].close()
                engines[side].dispose()
        finally:
            for db in dbs.values():
                db.drop()
    print(f"{rows} session rows in {args.batches} batches of {args.events} events, {args.rounds} rounds")
    for name, series in (("backend CPU us/row", cpu), ("wall us/row", wall)):
        a, b = statistics.median(series["A"]), statistics.median(series["B"])
        print(f"{name:20s} median A {a:8.2f}  B {b:8.2f}  B/A {b / a:.3f}   "
              f"(total A {sum(series['A']):.0f}, B {sum(series['B']):.0f})")
    per_batch = [b / a for a, b in zip(cpu["A"], cpu["B"], strict=True)]
    print(f"backend CPU B/A per batch: median {statistics.median(per_batch):.3f}, "
          f"quartiles {statistics.quantiles(per_batch, n=4)[0]:.3f}-{statistics.quantiles(per_batch, n=4)[2]:.3f}")


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
