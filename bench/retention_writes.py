"""What partitioning ``events`` (migration 0027) costs the worker's write: figures, not a test.

The batches of bench/worker_writes.py (simulated shoppers folded as the worker folds them) are written with
``StreamWriter`` to two scratch databases, alternating which goes first: A is migrated to every head but 0027
and writes with the statement before it (one primary key on event_id, ON CONFLICT on it); B has 0027 and
writes with today's ``MERGE_EVENTS``. Reported per event: wall time of the write, and CPU time of the
PostgreSQL backend that ran it (read from /proc, so PostgreSQL must run on this machine).

    .venv/bin/python bench/retention_writes.py [--users 12500] [--batch-events 3000] [--redeliver]

Both write the events with the JSON merge (``StreamWriter(copy_events=False)``), the statement this compares;
the worker now COPYs them (bench/worker_writes.py --a-before-copy measures that change).

``--redeliver`` writes every batch twice (a redelivery: every event of the second write is refused).
``--same`` makes B like A (an A/A run): its ratio is the noise.
"""

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.worker_writes import captured_batches  # noqa: E402
from spoor.settings import Settings  # noqa: E402
from spoor.storage import writers  # noqa: E402
from spoor.storage.migrate import HERE  # noqa: E402
from tests.support.scratch_db import ScratchDatabase  # noqa: E402

BEFORE_0027 = (
    f"INSERT INTO events ({', '.join(writers.EVENT_COLUMNS)}) "
    f"SELECT {', '.join(writers.EVENT_COLUMNS)} FROM json_populate_recordset(NULL::events, %s::json) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def migrate(url: str, with_0027: bool) -> None:
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    script = ScriptDirectory.from_config(config)
    heads = script.get_heads()
    if not with_0027:  # every head but 0027, and what 0027 stands on
        heads = [h for h in heads if h != "0027"] + list(script.get_revision("0027").down_revision)
    for head in heads:
        command.upgrade(config, head)


def backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=12_500)
    parser.add_argument("--batch-events", type=int, default=3000)
    parser.add_argument("--redeliver", action="store_true")
    parser.add_argument("--same", action="store_true", help="B as A: the noise")
    args = parser.parse_args()
    settings = Settings()
    batches, n = captured_batches(settings, args.users, args.batch_events)
    print(f"{n} events in {len(batches)} batches", flush=True)
    run = uuid.uuid4().hex[:8]
    databases = [ScratchDatabase(settings.database_url, f"spoor_retention_{run}_{name}") for name in "ab"]
    engines = []
    try:
        for which, database in enumerate(databases):
            migrate(database.url, with_0027=bool(which) and not args.same)
            engines.append(create_engine(database.url, pool_size=1, max_overflow=0))
        pids = []
        for engine in engines:
            with engine.connect() as conn:
                pids.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        new_statement = writers.MERGE_EVENTS
        statements = (BEFORE_0027, BEFORE_0027 if args.same else new_statement)
        stream_writers = [writers.StreamWriter(engine, copy_events=False) for engine in engines]
        wall, cpu = [0.0, 0.0], [0.0, 0.0]
        for index, (rows, events, derived) in enumerate(batches):
            for which in ((0, 1) if index % 2 == 0 else (1, 0)):
                writers.MERGE_EVENTS = statements[which]
                for _ in range(2 if args.redeliver else 1):
                    cpu_before, started = backend_cpu_s(pids[which]), time.perf_counter()
                    stream_writers[which].write_batch(rows, events, derived)
                    wall[which] += time.perf_counter() - started
                    cpu[which] += backend_cpu_s(pids[which]) - cpu_before
        writers.MERGE_EVENTS = new_statement
        for name, engine in zip("AB", engines):
            with engine.connect() as conn:
                print(name, "events stored:", conn.execute(text("SELECT count(*) FROM events")).scalar_one())
    finally:
        for engine in engines:
            engine.dispose()
        for database in databases:
            database.drop()
    writes = n * (2 if args.redeliver else 1)
    print(f"a_wall_us_per_event: {wall[0] / writes * 1e6:.1f}")
    print(f"b_wall_us_per_event: {wall[1] / writes * 1e6:.1f}")
    print(f"a_backend_cpu_us_per_event: {cpu[0] / writes * 1e6:.1f}")
    print(f"b_backend_cpu_us_per_event: {cpu[1] / writes * 1e6:.1f}")
    print(f"b_vs_a_wall: {wall[1] / wall[0]:.3f}")
    print(f"b_vs_a_backend_cpu: {cpu[1] / cpu[0]:.3f}")


if __name__ == "__main__":
    main()
