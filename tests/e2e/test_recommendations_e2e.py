"""Recommendations through the whole stack: events posted to the HTTP collector -> Kafka -> the Faust
worker -> PostgreSQL -> a real admin API process (`spoor segments api`), read with a reader key as a
shop's backend would. A purchase changes the buyer's list, the product's neighbours ("bought with ...")
and the list of another shopper who viewed the product, within seconds of the collector's 200."""

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import text

from spoor.cli.collector_client import CollectorClient
from spoor.storage.api_keys import create_key
from spoor.storage.recommendation_reads import LIST_TTL_S
from tests.support.local_stack import REPO, SpoorProcess, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
TOKEN = "test-admin-token"
WITHIN_S = 15.0  # the worker's batch, its write, and the API's product cache (2 s)
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


@pytest.fixture(scope="module")
def api(test_settings, tmp_path_factory):
    settings = test_settings.model_copy(update={"admin_token": TOKEN, "admin_api_port": free_port()})
    log = tmp_path_factory.mktemp("logs") / "admin-api.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "spoor.cli", "segments", "api"], cwd=REPO,
                                   env=SpoorProcess("segments", settings, log.parent).env(),
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.admin_api_port}"

    def healthy():
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, "the admin API")
    yield url
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
    # bob viewed M1: what was bought with it is now on his list, for that reason. His own interests did not
    # change, so the API may give his list as worked out before for LIST_TTL_S (recommendation_reads.py).
    wait_until(lambda: items("/v1/recommendations/users/bob").get("M2") == "bought with M1", WITHIN_S + LIST_TTL_S,
               "M2 on bob's list, bought with M1")
    elapsed = time.monotonic() - accepted
    assert elapsed < WITHIN_S + LIST_TTL_S
    print(f"purchase visible in both lists {elapsed:.1f} s after the collector's 200")
    # The admin token reads the same routes; the reader key nothing else.
    assert httpx.get(f"{api}/v1/recommendations/users/ann", headers={"Authorization": f"Bearer {TOKEN}"}
                     ).json() == ann
    assert http.get("/users/ann").status_code == 403
    assert http.get("/v1/recommendations/users/nobody").json()["personal"] is False
