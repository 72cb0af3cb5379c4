"""b. kill -9 of the worker at the worst moment, again and again while traffic flows.

``SPOOR_FAULT_CRASH_POINT=after_persist`` makes the Faust worker SIGKILL itself after the batch's
changelog records were acknowledged and its PostgreSQL transaction committed, before its offsets
are committed (stream_processors/fault_points.py): every batch it dies on is redelivered to a
worker that already stored it. `spoor worker`'s supervisor restarts only a fail-stop (exit 70), so
after such a kill it exits too, and the test starts it again as an orchestrator would. Then a
worker without the crash point catches up, and PostgreSQL must equal the answers exactly.
"""

import random
import time

import pytest

from tests.faults.harness import FORMS, Sender, Summary
from tests.faults.workload import batches, persisted_count, settled, shoppers

pytestmark = [pytest.mark.integration, pytest.mark.faults]

KILLED = 256 - 9  # `spoor worker` exits with its child's code: sys.exit(-9) after the child's SIGKILL


@pytest.mark.parametrize("form", FORMS)
def test_kill_after_persist_before_ack_loses_and_doubles_nothing(form, client, engine, workers):
    summary = Summary("b. worker kill -9 after persist, before ack", form)
    full = form == "full"
    rng = random.Random(18)
    # The long form also SIGKILLs `spoor worker` from outside at random moments, between crash points.
    plan = ["crash"] * 3 if not full else ["crash", "crash", "external"] * 3 + ["crash", "crash"]
    worker = workers(worker_batch_max=100)  # small batches: many commits, many moments to die at

    pool = shoppers("kill", users=3000 if full else 1000, events_per_user=15, seed=18)
    sender = Sender(client, batches(pool, 25), pause_s=0.15, retry_every=7)
    sender.start()
    time.sleep(2)
    exits = []
    for i, how in enumerate(plan):
        worker.stop()
        if how == "external":
            worker.start(wait_healthy=False)
            time.sleep(rng.uniform(6, 14))
            worker.kill()
            exits.append("external")
            continue
        worker.start(crash_after=rng.randint(2, 9), wait_healthy=False)
        code = worker.wait_exit(timeout=120)
        if code is None:
            summary.problem(f"kill {i + 1}: the worker did not reach its crash point within 120 s:\n"
                            f"{worker.log_tail(15)}")
            break
        if code != KILLED:
            summary.problem(f"kill {i + 1}: `spoor worker` exited with {code}, not by the crash point's SIGKILL: "
                            f"{worker.critical_lines(6)}")
        exits.append(code)
    if worker.alive():
        worker.stop()
    worker.start()  # without the crash point
    sent = sender.finish()

    result, expected_ids, latency = settled(engine, client, summary, sent, "worker-kill",
                                            lambda: persisted_count(engine),
                                            "the restarted worker to catch up", stall_s=60)
    summary.add(events=len(expected_ids), batches_sent_twice=-(-sender.batches_sent // sender.retry_every),
                kills_at_crash_point=sum(1 for e in exits if e == KILLED),
                external_kills=exits.count("external"), persisted=result.persisted, lost=len(result.lost),
                doubled=result.doubled, supervisor_restarts=worker.fail_stops(),
                canary_s=latency if latency is not None else "missing")
    summary.finish()
