"""What events say about shoppers' interests and about products that go together. Pure: no I/O, no clock.

Every weight is time-decayed with a half-life ``H``: an event of weight ``w`` at time ``t`` counts
``w * 2^-((now - t) / H)`` at ``now``. Weights are kept as *forward-decayed logarithms*
(Cormode et al., "Forward Decay", ICDE 2009): ``log2(w) + t / H``. Then

- a sum of weights is ``log2_add`` of their logarithms (exact, commutative, so order and batching do
  not matter), and PostgreSQL keeps the same sum with ``spoor_log2_add`` (migration 0016);
- ranking by the stored logarithm is ranking by the decayed weight at any common ``now``;
- nothing overflows: the logarithm of an event in 2100 with a 7-day half-life is ~7,000.

From each event (storage/interests.py applies them once, for the events new to PostgreSQL):

- ``interest_rows``: the user's facets: ``product`` (views 1, clicks 0.5, cart adds 3, order lines 5),
  ``bought`` (one per order line: what "buy again" reads), ``category``, ``device`` and ``hour`` (of the
  day, UTC) of activity;
- ``popularity_rows``: each product's popularity (the same weights), with a second, short half-life for
  trending, and its latest category and price;
- ``order_pairs``: the products bought in one order, pairwise (weight 4, ``bought`` together). Products
  viewed or added in the same session are paired in PostgreSQL, which sees the user's earlier events
  (storage/interests.py).
"""

import math
from collections.abc import Iterable
from datetime import timezone

from spoor.events import Event, EventKind

PRODUCT_WEIGHTS = {EventKind.PRODUCT_VIEW: 1.0, EventKind.CLICK: 0.5, EventKind.CART_ADD: 3.0,
                   EventKind.PURCHASE: 5.0}
ACTIVITY_FACETS = ("device", "hour")
BOUGHT_TOGETHER_WEIGHT = 4.0
MAX_ORDER_LINES = 30  # pairs of at most 30 distinct products per order (435 pairs)
DAY_S = 86_400.0
FLOOR_EXPONENT = -1000.0  # 2^-1000 is still a float; smaller differences count as nothing


def forward_log2(weight: float, at_s: float, half_life_s: float) -> float:
    """The forward-decayed logarithm of ``weight`` at epoch second ``at_s``."""
    return math.log2(weight) + at_s / half_life_s


def log2_add(a: float | None, b: float | None) -> float | None:
    """log2(2^a + 2^b); None stands for a weight of zero."""
    if a is None:
        return b
    if b is None:
        return a
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log2(1.0 + 2.0 ** max(FLOOR_EXPONENT, low - high))


def log2_sum(values: Iterable[float | None]) -> float | None:
    total = None
    for value in values:
        total = log2_add(total, value)
    return total


def decayed(log_weight: float, now_s: float, half_life_s: float) -> float:
    """The weight a forward-decayed logarithm stands for at ``now_s`` (0.0 when it underflows)."""
    return 2.0 ** max(FLOOR_EXPONENT, log_weight - now_s / half_life_s)


def _lines(event: Event) -> list[tuple[str, str | None, str | None]]:
    """(product id, category, price) the event is about: an order's lines, else its own product."""
    if event.kind == EventKind.PURCHASE and event.products:
        seen, lines = set(), []
        for line in event.products:
            if line.product_id and line.product_id not in seen:
                seen.add(line.product_id)
                lines.append((line.product_id, line.category, None if line.price is None else str(line.price)))
        return lines
    if event.product_id:
        return [(event.product_id, event.category, None if event.price is None else str(event.price))]
    return []


def interest_rows(event: Event, half_life_s: float) -> list[tuple]:
    """(event id, user key, facet, value, log weight, price) rows; rows of one facet value add up."""
    at_s = event.event_time.timestamp()
    hour = event.event_time.astimezone(timezone.utc).hour  # an event may carry any offset
    rows = [(event.event_id, event.user_key, "hour", str(hour), forward_log2(1.0, at_s, half_life_s), None)]
    if event.device:
        rows.append((event.event_id, event.user_key, "device", event.device, forward_log2(1.0, at_s, half_life_s),
                     None))
    weight = PRODUCT_WEIGHTS.get(event.kind)
    if weight is None:
        return rows
    log_weight = forward_log2(weight, at_s, half_life_s)
    categories = set()
    for product_id, category, price in _lines(event):
        rows.append((event.event_id, event.user_key, "product", product_id, log_weight, price))
        if event.kind == EventKind.PURCHASE:
            rows.append((event.event_id, event.user_key, "bought", product_id, forward_log2(1.0, at_s, half_life_s),
                         price))
        if category and category not in categories:
            categories.add(category)
            rows.append((event.event_id, event.user_key, "category", category, log_weight, None))
    return rows


def popularity_rows(event: Event, half_life_s: float, trend_half_life_s: float) -> list[tuple]:
    """(event id, product id, category, price, log weight, trend log weight, bought log weight) rows."""
    weight = PRODUCT_WEIGHTS.get(event.kind)
    if weight is None:
        return []
    at_s = event.event_time.timestamp()
    main, trend = forward_log2(weight, at_s, half_life_s), forward_log2(weight, at_s, trend_half_life_s)
    bought = forward_log2(1.0, at_s, half_life_s) if event.kind == EventKind.PURCHASE else None
    return [(event.event_id, product_id, category, price, main, trend, bought)
            for product_id, category, price in _lines(event)]


def order_pairs(event: Event, half_life_s: float) -> list[tuple]:
    """(event id, product id, neighbour id, log weight) for each ordered pair of products of an order."""
    if event.kind != EventKind.PURCHASE:
        return []
    products = [product_id for product_id, _category, _price in _lines(event)][:MAX_ORDER_LINES]
    if len(products) < 2:
        return []
    log_weight = forward_log2(BOUGHT_TOGETHER_WEIGHT, event.event_time.timestamp(), half_life_s)
    return [(event.event_id, a, b, log_weight) for a in products for b in products if a != b]


def interest_batch(events: Iterable[Event], half_life_s: float, trend_half_life_s: float) -> dict:
    """The rows of a batch of events, as ``StreamWriter.write_batch(interests=...)`` takes them."""
    interests, popularity, pairs = [], [], []
    for event in events:
        interests += interest_rows(event, half_life_s)
        popularity += popularity_rows(event, half_life_s, trend_half_life_s)
        pairs += order_pairs(event, half_life_s)
    return {"interests": interests, "popularity": popularity, "pairs": pairs, "half_life_s": half_life_s}
