"""e. Redelivery of batches as large as the collector takes (2,500 events of one user per request):
the identical request sent again (a client retry) counts nothing twice, with and without messageIds.

Without messageIds the collector has to give each event an id that a retry reproduces; the profile
must count each event once either way.
"""

import pytest

from tests.faults.harness import FORMS, Summary, wait_with_progress
from tests.faults.workload import canary, check, ids_of, persisted_count, shoppers, truth

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BATCH = 2500  # settings.max_batch_events


def without_ids(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "messageId"} for m in messages]


@pytest.mark.parametrize("form", FORMS)
def test_retried_full_batches_count_once(form, client, engine, workers, test_settings):
    summary = Summary("e. redelivery of 2,500-event batches", form)
    full = form == "full"
    worker = workers().start()

    with_ids = [shoppers(f"rid{i}", 1, BATCH, seed=100 + i, exact=True) for i in range(3 if full else 1)]
    no_ids = [without_ids(shoppers(f"rno{i}", 1, BATCH, seed=200 + i, exact=True)) for i in range(2 if full else 1)]
    others = shoppers("rother", 200 if full else 20, 10, seed=300)
    requests = retries = 0

    def post(batch: list[dict]) -> None:
        nonlocal requests
        client.send(batch)
        requests += 1

    for batch in with_ids + no_ids:
        post(batch)
    post(others[:len(others) // 2])  # other users' traffic between a request and its retry
    for batch in with_ids + no_ids:
        post(batch)  # the client retry: byte for byte the same request
        retries += 1
    if full:
        # Retried again after the worker was SIGKILLed with everything in flight, and a third time.
        worker.kill()
        for batch in with_ids[:2] + no_ids[:1]:
            post(batch)
            retries += 1
        worker.start()
        for batch in with_ids[:1] + no_ids[:1]:
            post(batch)
            retries += 1
    post(others[len(others) // 2:])

    expected = truth([m for batch in with_ids for m in batch] + others)
    expected_ids = ids_of([m for batch in with_ids for m in batch] + others)
    expected_no_ids = {}
    for batch in no_ids:  # each event once: the answer of one copy of the request
        expected_no_ids.update(truth([{**m, "messageId": f"copy-{i}"} for i, m in enumerate(batch)]))
    total = len(expected_ids) + sum(len(b) for b in no_ids)

    def settled() -> bool:
        return check(engine, expected, expected_ids).ok and check(engine, expected_no_ids, None).ok

    try:
        wait_with_progress(settled, lambda: persisted_count(engine), "profiles to equal the answers",
                           stall_s=60, limit_s=300)
    except AssertionError as err:
        summary.problem(str(err).splitlines()[0])
    with_result = check(engine, expected, expected_ids)
    no_id_result = check(engine, expected_no_ids, None)
    for name, result in (("with messageIds", with_result), ("without messageIds", no_id_result)):
        if not result.ok:
            summary.problem(f"{name}: {result.describe()}")
    latency = canary(client, engine, "redelivery")
    if latency is None:
        summary.problem("the canary event was not persisted within the deadline")
    summary.add(events=total, requests=requests, retried_requests=retries,
                persisted=with_result.persisted + no_id_result.persisted,
                lost=len(with_result.lost) + sum(n for _, n in no_id_result.lost),
                doubled=with_result.doubled + no_id_result.doubled,
                worker_restarts=worker.starts - 1 + worker.fail_stops(),
                canary_s=latency if latency is not None else "missing")
    summary.finish()
