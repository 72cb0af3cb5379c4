"""Generated workloads with known answers, and the checks of PostgreSQL against them.

The answers are computed here from the messages, independently of the worker's code: per user the
event counts by kind, distinct orders and net revenue as exact Decimals, distinct products viewed,
the cart's value, first/last seen and purchase times. A check then reads PostgreSQL: every expected
user's ``user_profiles`` row must equal its answer, and ``events`` must hold each accepted event id
(primary key, so at most once) and nothing else of those users.
"""

import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import text

from tests.faults.harness import CANARY_DEADLINE_S, Client, Summary, wait_with_progress

ZERO = Decimal(0)
TRACK_KIND = {"product viewed": "product_view", "product clicked": "click", "product added": "cart_add",
              "product removed": "cart_remove", "checkout started": "checkout", "order completed": "purchase",
              "order refunded": "refund"}
COUNTER = {"page_view": "page_views", "product_view": "product_views", "click": "clicks", "cart_add": "cart_adds",
           "cart_remove": "cart_removes", "checkout": "checkouts"}
COUNTS = ["events", "page_views", "product_views", "clicks", "cart_adds", "cart_removes", "checkouts", "orders"]
COLUMNS = COUNTS + ["revenue", "distinct_products_viewed", "cart_value", "user_id", "first_seen_at", "last_seen_at",
                    "first_purchase_at", "last_purchase_at"]
NAMES = {"product_view": "Product Viewed", "click": "Product Clicked", "cart_add": "Product Added",
         "cart_remove": "Product Removed", "checkout": "Checkout Started", "purchase": "Order Completed",
         "refund": "Order Refunded"}
WEIGHTS = {"page": 22, "screen": 3, "identify": 2, "custom": 3, "product_view": 28, "click": 10, "cart_add": 12,
           "cart_remove": 5, "checkout": 6, "purchase": 7, "refund": 2}


def money(rng: random.Random, low: int = 100, high: int = 50_000) -> Decimal:
    return Decimal(rng.randint(low, high)) / 100


def as_json_number(rng: random.Random, amount: Decimal):
    """Money as a client sends it: a JSON number or a string (both exact here: 2 decimals)."""
    return str(amount) if rng.random() < 0.5 else float(amount)


def shoppers(prefix: str, users: int, events_per_user: int, seed: int, start: datetime | None = None,
             spread_s: int = 3600, exact: bool = False) -> list[dict]:
    """Segment messages of ``users`` users (``<prefix>-u<i>``), ~``events_per_user`` each (``exact``: that
    many), interleaved by time as a collector would receive them. Ids ``<prefix>-<user>-<n>``; times
    from ``start`` on, a few seconds apart (by default all in the past)."""
    rng = random.Random(seed)
    start = start or datetime.now(timezone.utc) - timedelta(seconds=spread_s + 62 * events_per_user + 600)
    catalog = [(f"P{i:04d}", rng.choice(["shoes", "bags", "toys", "home"]), money(rng)) for i in range(300)]
    messages = []
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    for u in range(users):
        user = f"{prefix}-u{u}"
        at = start + timedelta(seconds=rng.randint(0, spread_s))
        cart: list[tuple] = []
        orders: list[str] = []
        count = events_per_user if exact else max(1, int(rng.gauss(events_per_user, events_per_user / 3)))
        for n in range(count):
            at += timedelta(seconds=rng.randint(1, 30), microseconds=rng.randint(0, 999_999))
            kind = rng.choices(kinds, weights)[0]
            m = {"userId": user, "messageId": f"{prefix}-{u}-{n}", "timestamp": at.isoformat()}
            product = rng.choice(catalog)
            pid, category, price = product
            if kind in ("page", "screen"):
                m.update(type=kind, name=rng.choice(["Home", "Search", "Category"]),
                         properties={"url": f"https://shop.example/{n}"})
            elif kind == "identify":
                m.update(type="identify", traits={"email": f"{user}@example.com"})
            elif kind == "custom":
                m.update(type="track", event=rng.choice(["Newsletter Signup", "Wishlist Shared"]))
            elif kind in ("product_view", "click"):
                m.update(type="track", event=NAMES[kind],
                         properties={"product_id": pid, "category": category, "price": as_json_number(rng, price)})
            elif kind == "cart_add":
                quantity = rng.randint(1, 3)
                cart.append((pid, price))
                props = {"product_id": pid, "price": as_json_number(rng, price)}
                if quantity > 1 or rng.random() < 0.5:
                    props["quantity"] = quantity
                m.update(type="track", event=NAMES[kind], properties=props)
            elif kind == "cart_remove":
                pid = rng.choice(cart)[0] if cart and rng.random() < 0.8 else pid
                m.update(type="track", event=NAMES[kind], properties={"product_id": pid, "quantity": rng.randint(1, 2)})
            elif kind == "checkout":
                m.update(type="track", event=NAMES[kind], properties={"currency": "EUR"})
            elif kind == "purchase":
                if orders and rng.random() < 0.15:
                    order_id = rng.choice(orders)  # a reloaded thank-you page: an event, not an order
                else:
                    order_id = f"{prefix}-o-{u}-{n}"
                    orders.append(order_id)
                lines = [{"product_id": p, "price": as_json_number(rng, pr), "quantity": 1} for p, pr in cart[:3]]
                m.update(type="track", event=NAMES[kind], properties={
                    "order_id": order_id, "currency": "EUR", "revenue": as_json_number(rng, money(rng)),
                    "products": lines})
                cart.clear()
            elif kind == "refund":
                m.update(type="track", event=NAMES[kind], properties={
                    "order_id": rng.choice(orders) if orders else f"{prefix}-old-{u}",
                    "revenue": as_json_number(rng, money(rng, 100, 5_000))})
            messages.append(m)
    messages.sort(key=lambda m: m["timestamp"])
    return messages


def batches(messages: list, size: int) -> list[list]:
    return [messages[i:i + size] for i in range(0, len(messages), size)]


def kind_of(m: dict) -> str:
    if m["type"] in ("page", "screen"):
        return "page_view"
    if m["type"] == "identify":
        return "identify"
    if m["type"] != "track":
        return "custom"
    return TRACK_KIND.get(" ".join(m["event"].replace("_", " ").split()).lower(), "custom")


def _time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def truth(messages: list[dict]) -> dict[str, dict]:
    """Each user's expected ``user_profiles`` row from their messages in arrival order, each message id
    counted once. Needs messages with userId and timestamp (as ``shoppers`` makes them)."""
    users: dict[str, dict] = {}
    seen: set = set()
    for m in messages:
        key = (m["userId"], m.get("messageId"))
        if m.get("messageId") is not None and key in seen:
            continue
        seen.add(key)
        user_key = str(m["userId"])
        u = users.setdefault(user_key, {**{c: 0 for c in COUNTS}, "revenue": ZERO, "products": set(), "cart": {},
                                        "order_ids": set(), "user_id": user_key, "first_seen_at": None,
                                        "last_seen_at": None, "first_purchase_at": None, "last_purchase_at": None})
        at = _time(m["timestamp"])
        u["events"] += 1
        u["first_seen_at"] = min(filter(None, [u["first_seen_at"], at]))
        u["last_seen_at"] = max(filter(None, [u["last_seen_at"], at]))
        kind = kind_of(m)
        props = m.get("properties") or {}
        if kind in COUNTER:
            u[COUNTER[kind]] += 1
        if kind == "product_view" and props.get("product_id"):
            u["products"].add(str(props["product_id"]))
        elif kind == "cart_add" and props.get("product_id"):
            quantity, price = u["cart"].get(str(props["product_id"]), (0, ZERO))
            new_price = Decimal(str(props["price"])) if props.get("price") is not None else None
            u["cart"][str(props["product_id"])] = (quantity + (props.get("quantity") or 1), new_price or price)
        elif kind == "cart_remove" and str(props.get("product_id")) in u["cart"]:
            quantity, price = u["cart"][str(props["product_id"])]
            left = quantity - (props.get("quantity") or 1)
            if left > 0:
                u["cart"][str(props["product_id"])] = (left, price)
            else:
                del u["cart"][str(props["product_id"])]
        elif kind == "purchase":
            order_id = props.get("order_id")
            if order_id is None or order_id not in u["order_ids"]:
                if order_id is not None:
                    u["order_ids"].add(order_id)
                u["orders"] += 1
                u["revenue"] += Decimal(str(props.get("revenue", 0)))
                u["cart"].clear()
                u["first_purchase_at"] = min(filter(None, [u["first_purchase_at"], at]))
                u["last_purchase_at"] = max(filter(None, [u["last_purchase_at"], at]))
        elif kind == "refund":
            u["revenue"] -= Decimal(str(props.get("revenue", 0)))
    for u in users.values():
        u["distinct_products_viewed"] = len(u.pop("products"))
        u["cart_value"] = sum((q * p for q, p in u.pop("cart").values()), ZERO)
        u.pop("order_ids")
    return users


def canonical(m: dict, received_at: datetime, source: str = "backend") -> dict:
    """The canonical event (spoor/events.py's contract) a backend service would produce for a message of
    ``shoppers``: what the fault suite writes straight onto the events topic."""
    kind = kind_of(m)
    props = m.get("properties") or {}
    event = {"event_id": m["messageId"], "kind": kind, "user_key": m["userId"], "user_id": m["userId"],
             "event_time": m["timestamp"], "received_at": received_at.isoformat(), "source": source,
             "name": m.get("event") or m.get("name") or m["type"]}
    if m["type"] == "track":
        for name in ("product_id", "category", "order_id", "currency"):
            if props.get(name) is not None:
                event[name] = str(props[name])
        if props.get("price") is not None:
            event["price"] = str(props["price"])
        if props.get("quantity") is not None or kind in ("cart_add", "cart_remove"):
            event["quantity"] = props.get("quantity") or 1
        if kind in ("purchase", "refund"):
            event["revenue"] = str(props.get("revenue", 0))
            event["products"] = [{"product_id": line["product_id"], "price": str(line["price"]),
                                  "quantity": line["quantity"]} for line in props.get("products", [])]
    return event


@dataclass
class Check:
    users: int = 0
    missing_users: list = field(default_factory=list)
    wrong: list = field(default_factory=list)  # (user, {column: (got, want)})
    lost: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    doubled: int = 0  # events counted more than once, summed over users
    persisted: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing_users or self.wrong or self.lost or self.unexpected or self.doubled)

    def describe(self) -> str:
        return (f"{self.users} users expected, {len(self.missing_users)} missing {self.missing_users[:5]}, "
                f"{len(self.wrong)} wrong {self.wrong[:3]}, lost {len(self.lost)} {self.lost[:5]}, "
                f"unexpected {len(self.unexpected)} {self.unexpected[:5]}, doubled {self.doubled}")


def check(engine, expected: dict[str, dict], expected_ids: set | None, loose: dict[str, set] | None = None) -> Check:
    """PostgreSQL against the answers. ``expected_ids``: the event ids the users' rows in ``events`` must be
    (None: only their number is checked). ``loose``: columns not compared for some users."""
    result = Check(users=len(expected))
    keys = list(expected)
    with engine.connect() as conn:
        rows = {r.user_key: r._mapping for r in conn.execute(
            text("SELECT * FROM user_profiles WHERE user_key = ANY(:k)"), {"k": keys})}
        stored = conn.execute(text("SELECT event_id, user_key FROM events WHERE user_key = ANY(:k)"),
                              {"k": keys}).all()
    result.persisted = len(stored)
    for user, want in expected.items():
        got = rows.get(user)
        if got is None:
            result.missing_users.append(user)
            continue
        skip = (loose or {}).get(user, set())
        diff = {c: (got[c], want[c]) for c in COLUMNS if c not in skip and got[c] != want[c]}
        if diff:
            result.wrong.append((user, diff))
        result.doubled += max(0, got["events"] - want["events"])
    if expected_ids is not None:
        stored_ids = {event_id for event_id, _ in stored}
        result.lost = sorted(expected_ids - stored_ids)
        result.unexpected = sorted(stored_ids - expected_ids)
    else:
        per_user = defaultdict(int)
        for _, user in stored:
            per_user[user] += 1
        result.unexpected = [(u, n - expected[u]["events"]) for u, n in per_user.items() if n > expected[u]["events"]]
        result.lost = [(u, want["events"] - per_user[u]) for u, want in expected.items() if per_user[u] < want["events"]]
    return result


def ids_of(messages: list[dict]) -> set[str]:
    return {m["messageId"] for m in messages}


def persisted_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM events")).scalar_one()


def canary(client: Client, engine, scenario: str) -> float | None:
    """A fresh user's event sent after the fault; seconds from the collector's 200 to its row in
    ``events``, or None if it is not there within CANARY_DEADLINE_S."""
    event_id = f"canary-{scenario}-{uuid.uuid4().hex[:8]}"
    try:
        client.send([{"type": "track", "userId": f"canary-{scenario}", "messageId": event_id,
                      "event": "Product Viewed", "properties": {"product_id": "canary"}}], give_up_s=CANARY_DEADLINE_S)
    except AssertionError:  # the collector did not take it
        return None
    sent = time.monotonic()
    while time.monotonic() - sent < CANARY_DEADLINE_S:
        with engine.connect() as conn:
            if conn.execute(text("SELECT 1 FROM events WHERE event_id = :i"), {"i": event_id}).first():
                return time.monotonic() - sent
        time.sleep(0.1)
    return None


def settled(engine, client: Client, summary: Summary, sent: list[dict], scenario: str, progress,
            what: str = "the worker to catch up", stall_s: float = 90) -> tuple[Check, set, float | None]:
    """Waits until PostgreSQL holds exactly what ``sent`` makes (or the wait stalls), then sends a
    canary; each shortfall is a problem of ``summary``. Returns (the check, the expected event ids,
    the canary's seconds or None)."""
    expected, expected_ids = truth(sent), ids_of(sent)
    try:
        wait_with_progress(lambda: check(engine, expected, expected_ids).ok, progress, what,
                           stall_s=stall_s, limit_s=600)
    except AssertionError as err:
        summary.problem(str(err).splitlines()[0])
    result = check(engine, expected, expected_ids)
    if not result.ok:
        summary.problem(result.describe())
    latency = canary(client, engine, scenario)
    if latency is None:
        summary.problem("the canary event was not persisted within the deadline")
    return result, expected_ids, latency
