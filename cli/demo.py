"""``spoor demo``: simulated shoppers through the running collector, then a summary read from PostgreSQL."""

import sys
import time
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine, text

from spoor.cli import demo_campaign
from spoor.cli.collector_client import CollectorClient
from spoor.cli.demo_alerts import demo_traffic, print_alerts, wait_for_alerts
from spoor.settings import Settings
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


def send_traffic(collector_url: str, write_key: str, messages: list[dict], bad: list[dict]) -> int:
    """Send the messages in batches (the invalid ones in the middle, one batch twice); the rejections."""
    client = CollectorClient(collector_url, write_key)
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
    client.send_batch(batches[0])  # a client retry: must not be counted twice
    client.close()
    print(f"  collector accepted {len(messages)} events, rejected {rejected} "
          f"in {time.monotonic() - started:.1f}s; waiting for the worker to persist them", flush=True)
    return rejected


def run_demo(engine: Engine, collector_url: str, write_key: str, users: int, timeout_s: float = 180,
             settings: Settings | None = None) -> dict:
    """The traffic and its alert story; with ``settings``, the cart-abandonment campaign (demo_campaign.py)."""
    seed = int(time.time())
    messages, story = demo_traffic(engine, users, seed)  # includes a checkout outage, time-compressed
    bad = invalid_messages(seed)
    before = count_events(engine), count_dead_letters(engine)
    first = datetime.fromisoformat(messages[0]["timestamp"])
    campaign = demo_campaign.launch(engine, settings, seed, first) if settings else None
    try:
        print(f"sending {len(messages)} events of {users} simulated shoppers and steady traffic to {collector_url} "
              f"(plus {len(bad)} invalid events and one re-sent batch)", flush=True)
        rejected = send_traffic(collector_url, write_key, messages, bad)
        wait_persisted(engine, before, len(messages), rejected, timeout_s)
        traffic_persisted = demo_campaign.database_now(engine)  # the segments shown are those of the traffic
        alerts = []
        if story.windows_open:
            print("  waiting for the checkout alert to fire and resolve (event time)", flush=True)
            alerts = wait_for_alerts(engine, story)
        result = {"alerts": alerts, "story": story}
        if campaign:
            result.update(run_campaign(engine, campaign, collector_url, write_key, seed, timeout_s))
        result["segments"] = demo_campaign.segment_sizes(engine, traffic_persisted)
    finally:
        if campaign:  # never left active: the stack's runner would keep sending to a closed receiver
            demo_campaign.stop(engine, campaign)
    result["attribution"] = wait_for_attribution(engine, first, timeout_s)
    return {**summary(engine), "recommendations": sample_recommendations(engine), **result}


def wait_persisted(engine: Engine, before: tuple[int, int], events: int, rejections: int, timeout_s: float) -> None:
    """Until PostgreSQL holds ``events`` more events and ``rejections`` more dead letters than ``before``."""
    deadline = time.monotonic() + timeout_s
    while True:
        persisted, dead = count_events(engine) - before[0], count_dead_letters(engine) - before[1]
        finished = persisted >= events and dead >= rejections
        progress(f"  persisted {persisted}/{events} events, {dead}/{rejections} rejections", finished)
        if finished:
            return
        if time.monotonic() > deadline:
            print(file=sys.stderr)
            raise SystemExit(f"the worker persisted only {persisted}/{events} events in {timeout_s}s: "
                             "see the worker log (make logs)")
        time.sleep(0.5)


def run_campaign(engine: Engine, campaign: demo_campaign.DemoCampaign, collector_url: str, write_key: str,
                 seed: int, timeout_s: float) -> dict:
    """Send the campaign's messages, then the orders of the shoppers who come back; the report."""
    print(f"  campaign {campaign.name}: sending to the cart abandoners (signed webhooks to {campaign.receiver.url})",
          flush=True)
    demo_campaign.dispatch(engine, campaign)
    returns, returned = demo_campaign.returning_shoppers(engine, campaign, seed)
    print(f"  {len(returns)} shoppers come back and buy", flush=True)
    before = count_events(engine), count_dead_letters(engine)
    client = CollectorClient(collector_url, write_key)
    for i in range(0, len(returns), BATCH):
        status, body = client.send_batch(returns[i:i + BATCH])
        if status != 200:
            raise SystemExit(f"collector answered {status}: {body}")
    client.close()
    wait_persisted(engine, before, len(returns), 0, timeout_s)
    return {"campaign": {**demo_campaign.campaign_report(engine, campaign), "returned": returned}}


ORDERS_SINCE = text("SELECT count(*) FROM events WHERE kind = 'purchase' AND event_time >= :since")
ATTRIBUTED_SINCE = text("""
    SELECT count(DISTINCT conversion_id) FROM order_attribution
     WHERE model = 'last_touch' AND kind = 'order' AND converted_at >= :since""")
REVENUE_BY_CHANNEL = text("""
    SELECT channel, model, sum(amount) AS revenue FROM order_attribution
     WHERE converted_at >= :since GROUP BY channel, model""")


def wait_for_attribution(engine: Engine, since: datetime, timeout_s: float) -> dict | None:
    """Net revenue by channel and model of the orders since ``since``, once the segments runner's
    attribution pass (segments/attribution.py) has credited every one of them; None if it has not in time."""
    deadline = time.monotonic() + min(timeout_s, 60)
    while True:
        with engine.connect() as conn:
            orders = conn.execute(ORDERS_SINCE, {"since": since}).scalar_one()
            credited = conn.execute(ATTRIBUTED_SINCE, {"since": since}).scalar_one()
            finished = credited >= orders
            progress(f"  attributed {credited}/{orders} orders to channels", finished)
            if finished:
                by_channel: dict[str, dict[str, Decimal]] = {}
                for row in conn.execute(REVENUE_BY_CHANNEL, {"since": since}):
                    by_channel.setdefault(row.channel, {})[row.model] = row.revenue
                return by_channel
        if time.monotonic() > deadline:
            print("\n  the segments runner has not attributed every order yet (is it running? make logs)", flush=True)
            return None
        time.sleep(0.5)


def print_attribution(by_channel: dict[str, dict[str, Decimal]]) -> None:
    models = ("first_touch", "last_touch", "linear", "position_based")
    print("  revenue by channel (attributed under each model)")
    print(f"      {'channel':<22}" + "".join(f"{m:>16}" for m in models))
    ranked = sorted(by_channel.items(), key=lambda item: -item[1].get("last_touch", Decimal(0)))
    for name, revenue in ranked:
        print(f"      {name[:22]:<22}" + "".join(f"{revenue.get(m, Decimal(0)):>16.2f}" for m in models))


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
    if "segments" in result:
        demo_campaign.print_segments(result["segments"])
    if "campaign" in result:
        demo_campaign.print_campaign(result["campaign"])
    if result.get("attribution") is not None:
        print_attribution(result["attribution"])
    if "story" in result:
        print_alerts(result["alerts"], result["story"])


def _items(items: list[dict]) -> str:
    return ", ".join(f"{item['product_id']} ({item['reason']})" for item in items) or "none yet"
