"""f. Erasure while the worker lags: a user's events wait on the topic, `spoor users erase` runs, more of
the user's events arrive, then the worker starts.

The user's data from before the erasure must be gone (profile, events rows, the worker's state: a
restored state must not bring it back), the events after it must form a fresh profile, and every
other user must be exact. The long form then SIGKILLs the worker, sends more of the user's events and
starts it again: the state it restores (RocksDB and the changelog) must hold only post-erasure data.
"""

import json
import subprocess
import sys
import time

import pytest
from sqlalchemy import text

from tests.faults.harness import FORMS, REPO, Summary, spoor_env, wait_with_progress
from tests.faults.workload import canary, check, ids_of, persisted_count, shoppers, truth

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def erase(settings, user_key: str) -> tuple[dict, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "spoor.cli", "users", "erase", user_key, "--actor", "fault-suite"],
                          cwd=REPO, env=spoor_env(settings), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"spoor users erase exited {done.returncode}:\n{done.stderr[-2000:]}"
    return json.loads(done.stdout), time.monotonic() - started


@pytest.mark.parametrize("form", FORMS)
def test_erasure_while_the_worker_lags(form, client, engine, workers, test_settings):
    summary = Summary("f. erasure while the worker lags", form)
    full = form == "full"
    worker = workers().start()
    others = shoppers("erase-other", users=600 if full else 60, events_per_user=12, seed=6)
    target = shoppers("erase-target", users=1, events_per_user=160 if full else 80, seed=7, exact=True)
    user = target[0]["userId"]
    parts = [target[i::4] for i in range(4)]  # before the stop, lagging before the erasure, after, after a kill
    parts = [sorted(p, key=lambda m: m["timestamp"]) for p in parts]
    chunks = [others[i::4] for i in range(4)]

    def send(messages: list[dict]) -> None:
        for i in range(0, len(messages), 50):
            client.send(messages[i:i + 50])

    # 1. The worker stores the user's first events (profile, events rows, table state, changelog).
    send(chunks[0] + parts[0])
    wait_with_progress(lambda: check(engine, truth(chunks[0] + parts[0]), ids_of(chunks[0] + parts[0])).ok,
                       lambda: persisted_count(engine), "the first events", stall_s=60, limit_s=180)
    # 2. The worker stops; more of the user's events wait on the topic.
    worker.stop()
    send(chunks[1] + parts[1])
    # 3. Erasure with no worker running; 4. more events of the user after it.
    report, erase_s = erase(test_settings, user)
    if report.get("worker_state_erased") is not False:
        summary.problem(f"with no worker running, the erasure reported worker_state_erased "
                        f"{report.get('worker_state_erased')!r}")
    send(parts[2] + chunks[2])
    worker.start()
    after = parts[2]
    if full:
        wait_with_progress(lambda: check(engine, truth(after), ids_of(after)).ok, lambda: persisted_count(engine),
                           "the post-erasure events", stall_s=60, limit_s=300)
        worker.kill()
        send(parts[3] + chunks[3])
        after = parts[2] + parts[3]
        worker.start()
    everyone = chunks[0] + chunks[1] + chunks[2] + (chunks[3] if full else [])
    expected = {**truth(everyone), **truth(after)}
    expected_ids = ids_of(everyone + after)
    try:
        wait_with_progress(lambda: check(engine, expected, expected_ids).ok, lambda: persisted_count(engine),
                           "the worker to catch up", stall_s=60, limit_s=300)
    except AssertionError as err:
        summary.problem(str(err).splitlines()[0])
    result = check(engine, expected, expected_ids)
    if not result.ok:
        summary.problem(result.describe())
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM events WHERE event_id = ANY(:ids)"),
                            {"ids": sorted(ids_of(parts[0] + parts[1]))}).scalar_one()
        audit = conn.execute(text("SELECT action FROM privacy_audit_log ORDER BY id")).scalars().all()
    if left:
        summary.problem(f"{left} events of the erased user from before the erasure are still in PostgreSQL")
    if audit != ["erase_rows", "erase_state"]:
        summary.problem(f"privacy_audit_log holds {audit}")
    latency = canary(client, engine, "erasure")
    if latency is None:
        summary.problem("the canary event was not persisted within the deadline")
    summary.add(events=len(expected_ids) + len(parts[0]) + len(parts[1]), erased_events=len(parts[0]) + len(parts[1]),
                erased_left=left, post_erasure_events=len(after), erase_s=erase_s, other_users=len(expected) - 1,
                persisted=result.persisted, lost=len(result.lost), doubled=result.doubled,
                worker_restarts=worker.starts - 1, canary_s=latency if latency is not None else "missing")
    summary.finish()
