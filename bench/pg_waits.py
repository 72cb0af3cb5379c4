"""What PostgreSQL's sessions are doing, sampled: figures, not a test. Run beside a benchmark on a running stack.

Every ``--interval`` seconds for ``--seconds``, reads ``pg_stat_activity`` and counts each active backend by
its process (``application_name``, set per process by deploy/stack.sh) and what it is waiting for
(``wait_event_type:wait_event``, or ``CPU`` when it waits for nothing). The shares say whether a process's
statements spend their time working or waiting, e.g. on row locks another worker holds (``Lock:transactionid``).

    .venv/bin/python bench/pg_waits.py --seconds 60 &  make bench N=200000
"""

import argparse
import collections
import time

from sqlalchemy import create_engine, text

from spoor.settings import Settings

SAMPLE = text("""
    SELECT coalesce(nullif(application_name, ''), backend_type) AS process,
           coalesce(wait_event_type || ':' || wait_event, 'CPU') AS waiting_for
      FROM pg_stat_activity
     WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--database-url", default=Settings().database_url)
    args = parser.parse_args()
    counts: collections.Counter = collections.Counter()
    samples = 0
    engine = create_engine(args.database_url)
    deadline = time.monotonic() + args.seconds
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            for process, waiting_for in conn.execute(SAMPLE):
                counts[(process, waiting_for)] += 1
            conn.rollback()
            samples += 1
            time.sleep(args.interval)
    per_process = collections.Counter()
    for (process, _), n in counts.items():
        per_process[process] += n
    print(f"{samples} samples every {args.interval} s; active backends per sample, by process and wait")
    for (process, waiting_for), n in sorted(counts.items(), key=lambda item: (-per_process[item[0][0]], -item[1])):
        print(f"  {process:28} {waiting_for:32} {n / samples:6.3f}  ({100 * n / per_process[process]:5.1f} %)")


if __name__ == "__main__":
    main()
