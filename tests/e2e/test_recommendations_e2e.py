"""Recommendations through the whole stack: events posted to the HTTP collector -> Kafka -> the Faust
worker -> PostgreSQL -> the segments runner (`spoor segments run`, which makes the lists) -> a real admin
API process (`spoor segments api`, which serves them from memory), read with a reader key as a shop's
backend would. A purchase changes the buyer's list, the product's neighbours ("bought with ...") and the
list of another shopper who viewed the product, within seconds of the collector's 200."""

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import text

from spoor.cli.collector_client import CollectorClient
from spoor.storage.api_keys import create_key
from spoor.storage.recommendation_reads import REFRESH_S, STORED_LIST_MAX_AGE_S
from tests.support.local_stack import REPO, SpoorProcess, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
TOKEN = "test-admin-token"
WITHIN_S = 15.0  # the worker's batch and write, the runner's pass (POLL_S), the API's refresh (0.5 s)
POLL_S = 2.0
T0 = datetime.now(timezone.utc) - timedelta(hours=1)


def iso(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def viewed(user: str, product: str, minutes: float) -> dict:
    return {"type": "track", "userId": user, "event": "Product Viewed", "messageId": f"{user}-view-{product}",
            "timestamp": iso(minutes), "properties": {"product_id": product, "category": "mugs", "price": 8}}


def bought(user: str, order: str, products: list[str], minutes: float) -> dict:
    return {"type": "track", "userId": user, "event": "Order Completed", "messageId": f"{user}-{order}",
            "timestamp": iso(minutes), "properties": {"order_id": order, "currency": "EUR", "products": [
                {"product_id": p, "category": "mugs", "price": 8, "quantity": 1} for p in products]}}


def interested(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT DISTINCT user_key FROM user_interests")).scalars())


def started(settings, logs, command: str, port: int) -> subprocess.Popen:
    log = logs / f"{command}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "spoor.cli", "segments", command], cwd=REPO,
                                   env=SpoorProcess("segments", settings, logs).env(),
                                   stdout=out, stderr=subprocess.STDOUT)

    def healthy():
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, f"spoor segments {command}")
    return process


def made(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT user_key FROM user_recommendations UNION ALL "
                                     "SELECT product_id FROM product_recommendations")).scalars())


@pytest.fixture(scope="module")
def api(test_settings, tmp_path_factory):
    """The admin API and the segments runner that makes the lists it serves."""
    settings = test_settings.model_copy(update={
        "admin_token": TOKEN, "admin_api_port": free_port(), "segments_web_port": free_port(),
        "segments_poll_s": POLL_S, "segments_change_overlap_s": 1.0})
    logs = tmp_path_factory.mktemp("logs")
    processes = [started(settings, logs, "run", settings.segments_web_port),
                 started(settings, logs, "api", settings.admin_api_port)]
    yield f"http://127.0.0.1:{settings.admin_api_port}"
    for process in processes:
        process.terminate()
        process.wait(30)


def test_a_purchase_changes_the_lists_within_seconds(collector, write_key, engine, start_process, api):
    start_process("worker")
    reader = create_key(engine, "shop-backend", "recommendations")
    http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {reader}"}, timeout=10)
    client = CollectorClient(collector, write_key)
    # Background: a catalogue with popularity, and bob, who looked at the mug M1 earlier.
    history = [bought("other", "o-1", ["M7", "M8"], 0), bought("other", "o-2", ["M8", "M9"], 1),
               viewed("bob", "M1", 2), viewed("ann", "M5", 3)]
    assert client.send_batch(history)[0] == 200
    wait_until(lambda: interested(engine) == {"ann", "bob", "other"}, 60, "the shoppers' interests")

    def items(path: str) -> dict:
        answer = http.get(path, params={"k": 20})
        assert answer.status_code == 200, answer.text
        return {i["product_id"]: i["reason"] for i in answer.json()["items"]}

    wait_until(lambda: made(engine) >= {"ann", "bob", "M1"}, WITHIN_S, "the runner to make the lists")
    time.sleep(4 * REFRESH_S)  # and the API to read them
    assert "M2" not in items("/v1/recommendations/products/M1")
    assert items("/v1/recommendations/users/ann").get("M1") != "buy again"
    assert "bought with M1" not in items("/v1/recommendations/users/bob").values()

    assert client.send_batch([bought("ann", "o-3", ["M1", "M2"], 10)])[0] == 200
    accepted = time.monotonic()
    client.close()
    wait_until(lambda: items("/v1/recommendations/products/M1").get("M2") == "bought with M1", WITHIN_S,
               "M2 among M1's neighbours, bought with it")
    assert items("/v1/recommendations/products/M2").get("M1") == "bought with M2"
    wait_until(lambda: items("/v1/recommendations/users/ann").get("M1") == "buy again", WITHIN_S,
               "ann's list to offer M1 again")
    ann = http.get("/v1/recommendations/users/ann").json()
    assert ann["personal"] is True and {"M1", "M2"} <= {i["product_id"] for i in ann["items"]}
    print(f"purchase visible in ann's and M1's lists {time.monotonic() - accepted:.1f} s after the collector's 200")
    # bob viewed M1: what was bought with it reaches his list, for that reason, when it is made again. His own
    # interests did not change, so that is when it is STORED_LIST_MAX_AGE_S old (recommendation_reads.py).
    with engine.begin() as conn:
        conn.execute(text("UPDATE user_recommendations SET computed_at = now() - make_interval(secs => :s) "
                          "WHERE user_key = 'bob'"), {"s": STORED_LIST_MAX_AGE_S})
    wait_until(lambda: items("/v1/recommendations/users/bob").get("M2") == "bought with M1", WITHIN_S,
               "M2 on bob's list, bought with M1")
    # The admin token reads the same routes; the reader key nothing else.
    assert httpx.get(f"{api}/v1/recommendations/users/ann", headers={"Authorization": f"Bearer {TOKEN}"}
                     ).json() == ann
    assert http.get("/users/ann").status_code == 403
    assert http.get("/v1/recommendations/users/nobody").json()["personal"] is False
