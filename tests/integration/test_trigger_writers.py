"""Two writers of ``behaviour_triggers`` at once, on the real PostgreSQL.

The worker inserts a batch's triggers inside its stream transaction while the campaigns runner
inserts the same triggers from the triggers topic. Both must take the rows' locks in one order,
else each can hold a row the other waits for: PostgreSQL then aborts one of them (a deadlock),
and an aborted worker batch stops the worker.
"""

import random
import threading
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, event, text

from spoor.campaigns.trigger_intake import store_triggers
from spoor.storage.analytics_writer import write_analytics

pytestmark = pytest.mark.integration
ROUNDS = 12
TRIGGERS_PER_ROUND = 3000


def trigger_rows(round_: int) -> list[dict]:
    fired_at = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)
    return [{"trigger_id": f"cart_abandonment:user-{round_}-{i:05d}:e1", "kind": "cart_abandonment",
             "user_key": f"user-{round_}-{i:05d}", "episode": "e1", "fired_at": fired_at, "details": {}}
            for i in range(TRIGGERS_PER_ROUND)]


def as_worker(engine, rows: list[dict]) -> None:
    """The worker's path: write_analytics inside an open transaction (storage/writers.py)."""
    out = SimpleNamespace(retired_sessions=[], sessions=[], activity=[], triggers=rows)
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        write_analytics(cursor, out, str)
        cursor.close()


def test_worker_and_campaigns_runner_insert_the_same_triggers_without_deadlock(engine):
    # The runner's engine signals when its INSERT goes to the server: the worker's then starts, so
    # the two statements run at the same time (the runner spends most of its call building SQL).
    runner_engine = create_engine(engine.url)
    runner_sent = threading.Event()
    event.listen(runner_engine, "before_cursor_execute", lambda *_args: runner_sent.set())
    shuffle = random.Random(7)
    try:
        for round_ in range(ROUNDS):
            rows = trigger_rows(round_)
            worker_rows, runner_rows = rows[:], rows[:]
            shuffle.shuffle(worker_rows)
            shuffle.shuffle(runner_rows)
            runner_sent.clear()
            errors = []

            def run(write, *args):
                try:
                    write(*args)
                except Exception as err:  # the deadlock surfaces as an exception in one of the two
                    errors.append(err)
                runner_sent.set()  # never leave the worker waiting

            runner = threading.Thread(target=run, args=(store_triggers, runner_engine, runner_rows))
            runner.start()
            runner_sent.wait(30)
            run(as_worker, engine, worker_rows)
            runner.join()
            assert not errors, f"round {round_}: {errors[0]}"
    finally:
        runner_engine.dispose()

    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM behaviour_triggers")).scalar()
    assert stored == ROUNDS * TRIGGERS_PER_ROUND
