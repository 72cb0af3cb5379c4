"""Simulated shoppers: Segment-spec messages like a shop's tracking would send. Pure and seeded."""

import random
import uuid
import zlib
from datetime import datetime, timedelta, timezone

CATEGORIES = ["shoes", "dresses", "bags", "watches", "sportswear", "home", "beauty", "toys"]

# Where shoppers arrive from, as Segment's libraries report it: UTM parameters (context.campaign) or the
# referring page (context.page.referrer); an empty context is a direct visit.
ARRIVALS = (
    {"campaign": {"source": "google", "medium": "cpc", "name": "brand"}},
    {"campaign": {"source": "newsletter", "medium": "email", "name": "weekly"}},
    {"page": {"referrer": "https://www.instagram.com/shop.example/"}},
    {"page": {"referrer": "https://www.bing.com/search?q=shop"}},
    {},
)


def arrival(user: str) -> dict:
    """The context a shopper arrives with, chosen from the user's name (no random draw, so a seeded
    run's other choices stay as they were)."""
    return ARRIVALS[zlib.crc32(user.encode()) % len(ARRIVALS)]


def catalog(size: int = 200, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    return [{"product_id": f"P{i:04d}", "category": rng.choice(CATEGORIES),
             "price": round(rng.uniform(5, 250), 2)} for i in range(size)]


def shopper_journey(rng: random.Random, user: str, products: list[dict], start: datetime,
                    login_at_checkout: bool = False, channels: bool = False) -> list[dict]:
    """One visit: pages, product views, some clicks, maybe a cart, maybe an order. With
    ``login_at_checkout`` the shopper browses under an anonymous id and logs in (``identify``) when
    checking out, as in most shops; the messages after it carry both ids. With ``channels`` every
    message carries the context the shopper arrived with (``arrival``)."""
    at = start
    messages: list[dict] = []
    ids = {"anonymousId": f"anon-{user}"} if login_at_checkout else {"userId": user}
    context = {"context": arrival(user)} if channels and arrival(user) else {}

    def emit(msg_type: str, **fields) -> None:
        nonlocal at
        at += timedelta(seconds=rng.randint(2, 90))
        messages.append({"type": msg_type, **ids, "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                         "timestamp": at.isoformat(), **context, **fields})

    emit("page", name="Home", properties={"url": "https://shop.example/", "path": "/"})
    viewed = rng.sample(products, k=rng.randint(1, 6))
    for product in viewed:
        if rng.random() < 0.5:
            emit("track", event="Product Clicked", properties=dict(product))
        emit("track", event="Product Viewed", properties=dict(product))
    if rng.random() < 0.35:
        cart = rng.sample(viewed, k=rng.randint(1, len(viewed)))
        for product in cart:
            emit("track", event="Product Added", properties={**product, "quantity": rng.randint(1, 3)})
        if len(cart) > 1 and rng.random() < 0.3:
            removed = cart.pop()
            emit("track", event="Product Removed", properties={**removed, "quantity": 1})
        if rng.random() < 0.6:
            if login_at_checkout:
                ids["userId"] = user
                emit("identify", traits={"plan": "member"})
            emit("track", event="Checkout Started", properties={"currency": "EUR"})
            if rng.random() < 0.7:
                lines = [{**p, "quantity": 1} for p in cart]
                emit("track", event="Order Completed", properties={
                    "order_id": str(uuid.UUID(int=rng.getrandbits(128))), "currency": "EUR",
                    "revenue": round(sum(p["price"] for p in lines), 2), "products": lines})
    return messages


def simulate(users: int, seed: int = 42, start: datetime | None = None, spread_s: int = 3600,
             login_at_checkout: bool = False, channels: bool = False) -> list[dict]:
    """Messages of ``users`` shoppers arriving over ``spread_s``, interleaved as a collector would receive them."""
    rng = random.Random(seed)
    products = catalog()
    start = start or datetime.now(timezone.utc) - timedelta(hours=2)
    journeys = [shopper_journey(rng, f"user-{seed}-{i}", products, start + timedelta(seconds=rng.randint(0, spread_s)),
                                login_at_checkout, channels) for i in range(users)]
    messages = [m for journey in journeys for m in journey]
    messages.sort(key=lambda m: m["timestamp"])
    return messages
