"""``spoor demo``: simulated shoppers through the running collector, then a summary read from PostgreSQL."""

import sys
import time

from sqlalchemy import Engine, text

from spoor.cli.collector_client import CollectorClient
from spoor.cli.demo_alerts import demo_traffic, print_alerts, wait_for_alerts
from spoor.storage.queries import count_dead_letters, count_events, summary
from spoor.storage.recommendations import for_product, for_user

BATCH = 100


def progress(line: str, done: bool = False) -> None:
    """Rewrite one status line on a terminal; print plain lines to a log or CI."""
    if sys.stdout.isatty():
        print("\r" + line, end="\n" if done else "", flush=True)
    elif done or int(time.monotonic()) % 3 == 0:
        print(line, flush=True)


def invalid_messages(seed: int) -> list[dict]:
    """A few broken events, as buggy tracking code would send them: each must be rejected with a reason."""
    return [
        {"type": "track", "userId": f"user-{seed}-bad", "messageId": f"bad-price-{seed}",
         "event": "Product Added", "properties": {"product_id": "P0001", "price": -3}},
        {"type": "track", "messageId": f"bad-user-{seed}", "event": "Product Viewed",
         "properties": {"product_id": "P0002"}},
        {"type": "track", "userId": f"user-{seed}-bad", "messageId": f"bad-name-{seed}", "properties": {}},
    ]


TOP_BUYER = text("SELECT user_key, orders FROM user_profiles WHERE orders > 0 ORDER BY orders DESC, user_key LIMIT 1")
TOP_PRODUCT = text("SELECT product_id FROM product_popularity ORDER BY weight DESC LIMIT 1")


def sample_recommendations(engine: Engine, k: int = 3) -> dict:
    """What the recommendation API would answer for the most frequent buyer and the most popular product."""
    with engine.connect() as conn:
        buyer = conn.execute(TOP_BUYER).first()
        product = conn.execute(TOP_PRODUCT).scalar()
        return {"user": buyer and {**for_user(conn, buyer.user_key, k), "orders": buyer.orders},
                "product": product and for_product(conn, product, k)}


def run_demo(engine: Engine, collector_url: str, write_key: str, users: int, timeout_s: float = 180) -> dict:
    seed = int(time.time())
    messages, story = demo_traffic(engine, users, seed)  # includes a checkout outage, time-compressed
    bad = invalid_messages(seed)
    events_before, rejected_before = count_events(engine), count_dead_letters(engine)
    client = CollectorClient(collector_url, write_key)
    print(f"sending {len(messages)} events of {users} simulated shoppers and steady traffic to {collector_url} "
          f"(plus {len(bad)} invalid events and one re-sent batch)", flush=True)
    started = time.monotonic()
    rejected = 0
    batches = [messages[i:i + BATCH] for i in range(0, len(messages), BATCH)]
    batches[len(batches) // 2] = batches[len(batches) // 2] + bad
    for number, batch in enumerate(batches, 1):
        status, body = client.send_batch(batch)
        if status == 400:
            rejected += len(body["rejected"])
        elif status != 200:
            raise SystemExit(f"collector answered {status}: {body}")
        if number % 10 == 0 or number == len(batches):
            progress(f"  sent {min(number * BATCH, len(messages))}/{len(messages)} events", number == len(batches))
    status, _ = client.send_batch(batches[0])  # a client retry: must not be counted twice
    client.close()
    print(f"  collector accepted {len(messages)} events, rejected {rejected} "
          f"in {time.monotonic() - started:.1f}s; waiting for the worker to persist them", flush=True)

    deadline = time.monotonic() + timeout_s
    while True:
        persisted = count_events(engine) - events_before
        dead = count_dead_letters(engine) - rejected_before
        finished = persisted >= len(messages) and dead >= rejected
        progress(f"  persisted {persisted}/{len(messages)} events, {dead}/{rejected} rejections", finished)
        if finished:
            break
        if time.monotonic() > deadline:
            print(file=sys.stderr)
            raise SystemExit(f"the worker persisted only {persisted}/{len(messages)} events in {timeout_s}s: "
                             "see the worker log (make logs)")
        time.sleep(0.5)
    if not story.windows_open:
        return {**summary(engine), "recommendations": sample_recommendations(engine), "alerts": [], "story": story}
    print("  waiting for the checkout alert to fire and resolve (event time)", flush=True)
    alerts = wait_for_alerts(engine, story)
    return {**summary(engine), "recommendations": sample_recommendations(engine), "alerts": alerts, "story": story}


def print_summary(result: dict) -> None:
    viewers = result["viewers"] or 1
    print("\nSpoor summary (read back from PostgreSQL)")
    print(f"  events accepted     {result['events_accepted']}")
    print(f"  events rejected     {result['events_rejected']}")
    for row in result["rejections"]:
        print(f"      {row['n']:>5}  {row['field']}: {row['reason']}")
    print(f"  users profiled      {result['users_profiled']}")
    print(f"  revenue             {result['revenue']:.2f}")
    print("  conversion (users)  view {v} -> cart {c} ({cp:.1%}) -> purchase {p} ({pp:.1%})".format(
        v=result["viewers"], c=result["carted"], cp=result["carted"] / viewers,
        p=result["purchased"], pp=result["purchased"] / viewers))
    print("  top products        product    views  cart adds")
    for row in result["top_products"]:
        print(f"                      {row['product_id']:<10} {row['views']:>5}  {row['cart_adds']:>9}")
    samples = result.get("recommendations") or {}
    if samples.get("user"):
        user = samples["user"]
        print(f"  recommended for     {user['user_key']} ({user['orders']} orders): " + _items(user["items"]))
    if samples.get("product"):
        product = samples["product"]
        print(f"  also bought with    {product['product_id']}: " + _items(product["items"]))
    if "story" in result:
        print_alerts(result["alerts"], result["story"])


def _items(items: list[dict]) -> str:
    return ", ".join(f"{item['product_id']} ({item['reason']})" for item in items) or "none yet"
