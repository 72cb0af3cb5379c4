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
  ``bought`` (one per order line: what "buy again" reads), and ``device`` and ``hour`` (of the day, UTC)
  once per session. Categories are the products' (``product_popularity``): a user's interest in a
  category is their summed interest in its products, worked out where it is read;
- ``popularity_rows``: each product's popularity (the same weights), with a second, short half-life for
  trending, and its latest category and price;
- ``order_pairs``: the products bought in one order, pairwise (weight 4, ``bought`` together);
- ``session_pairs``: a product viewed (1) or added to the cart (2) with the ``RECENT_PRODUCTS`` products
  the user viewed or added just before it in the same session (no gap over ``SESSION_GAP_S``). The past
  comes from the user's profile (``RecentActivity``), so no database read is needed: events are taken in
  the order they arrive, and a late event pairs with what was recent when it came.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timezone
from itertools import islice

from spoor.decay import FLOOR_EXPONENT, log2_add
from spoor.events import Event, EventKind

PRODUCT_WEIGHTS = {EventKind.PRODUCT_VIEW: 1.0, EventKind.CLICK: 0.5, EventKind.CART_ADD: 3.0,
                   EventKind.PURCHASE: 5.0}
ACTIVITY_FACETS = ("device", "hour")
BOUGHT_TOGETHER_WEIGHT = 4.0
MAX_ORDER_LINES = 30  # pairs of at most 30 distinct products per order (435 pairs)
SESSION_PAIR_WEIGHTS = {EventKind.PRODUCT_VIEW: 1.0, EventKind.CART_ADD: 2.0}
SESSION_GAP_S = 30 * 60.0  # the default session inactivity (SPOOR_SESSION_INACTIVITY_S)
RECENT_PRODUCTS = 3  # a product is paired with this many viewed or added just before it
DAY_S = 86_400.0


def forward_log2(weight: float, at_s: float, half_life_s: float) -> float:
    """The forward-decayed logarithm of ``weight`` at epoch second ``at_s``."""
    return math.log2(weight) + at_s / half_life_s


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


def interest_rows(event: Event, half_life_s: float, session_start: bool = True) -> list[tuple]:
    """(event id, user key, facet, value, log weight, price) rows; rows of one facet value add up.
    The hour and device of activity count once per session (``session_start``), not per event."""
    at_s = event.event_time.timestamp()
    rows = []
    if session_start:
        hour = event.event_time.astimezone(timezone.utc).hour  # an event may carry any offset
        rows.append((event.event_id, event.user_key, "hour", str(hour), forward_log2(1.0, at_s, half_life_s), None))
        if event.device:
            rows.append((event.event_id, event.user_key, "device", event.device,
                         forward_log2(1.0, at_s, half_life_s), None))
    weight = PRODUCT_WEIGHTS.get(event.kind)
    if weight is None:
        return rows
    log_weight = forward_log2(weight, at_s, half_life_s)
    for product_id, _category, price in _lines(event):
        rows.append((event.event_id, event.user_key, "product", product_id, log_weight, price))
        if event.kind == EventKind.PURCHASE:
            rows.append((event.event_id, event.user_key, "bought", product_id, forward_log2(1.0, at_s, half_life_s),
                         price))
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


@dataclass
class RecentActivity:
    """What pairing needs of a user's past: the time of their latest event and the products they viewed
    or added last in their current session (most recent last). The worker takes it from the user's
    profile before the batch."""

    last_seen_s: float | None = None
    products: list = field(default_factory=list)

    def session_continues(self, at_s: float) -> bool:
        return self.last_seen_s is not None and abs(at_s - self.last_seen_s) <= SESSION_GAP_S

    def saw(self, at_s: float, product_id: str | None) -> None:
        if not self.session_continues(at_s):
            if self.last_seen_s is not None and at_s < self.last_seen_s:
                return  # late, from an earlier session: neither the latest event nor a recent product
            self.products.clear()  # a new session: the products before the gap are not in it
        self.last_seen_s = at_s if self.last_seen_s is None else max(self.last_seen_s, at_s)
        if product_id:
            if product_id in self.products:
                self.products.remove(product_id)
            self.products.append(product_id)
            del self.products[:-RECENT_PRODUCTS]


def recent_activity(profile) -> RecentActivity:
    """A ``UserProfile``'s latest event time and last viewed products (ids kept as digests are left out)."""
    last_seen_s = profile.last_seen_at.timestamp() if profile.last_seen_at else None
    products = [p for p in islice(reversed(profile.products_viewed), RECENT_PRODUCTS) if not p.startswith("#")]
    return RecentActivity(last_seen_s, products[::-1])


def session_pairs(event: Event, recent: RecentActivity, half_life_s: float) -> list[tuple]:
    """(event id, product id, neighbour id, log weight) both ways between a viewed or added product and
    the user's ``RECENT_PRODUCTS`` products before it in the same session (weight 1; 2 for a cart add)."""
    if event.kind not in SESSION_PAIR_WEIGHTS or not event.product_id:
        return []
    at_s = event.event_time.timestamp()
    if not recent.session_continues(at_s):
        return []
    log_weight = forward_log2(SESSION_PAIR_WEIGHTS[event.kind], at_s, half_life_s)
    pairs = []
    for other in recent.products:
        if other != event.product_id:
            pairs += [(event.event_id, event.product_id, other, log_weight),
                      (event.event_id, other, event.product_id, log_weight)]
    return pairs


def interest_batch(events: Iterable[Event], half_life_s: float, trend_half_life_s: float,
                   recent: dict[str, RecentActivity] | None = None) -> dict:
    """The rows of a batch of events, as ``StreamWriter.write_batch(interests=...)`` takes them.
    ``recent``: each user's ``RecentActivity`` before the batch (none: the batch is all there is);
    walked forward through the user's events in the order given."""
    recent = {} if recent is None else recent
    interests, popularity, bought_together, seen_together = [], [], [], []
    for event in events:
        activity = recent.get(event.user_key)
        if activity is None:
            activity = recent[event.user_key] = RecentActivity()
        at_s = event.event_time.timestamp()
        interests += interest_rows(event, half_life_s, session_start=not activity.session_continues(at_s))
        popularity += popularity_rows(event, half_life_s, trend_half_life_s)
        bought_together += order_pairs(event, half_life_s)
        seen_together += session_pairs(event, activity, half_life_s)
        activity.saw(at_s, event.product_id if event.kind in SESSION_PAIR_WEIGHTS else None)
    return {"interests": interests, "popularity": popularity, "pairs": bought_together,
            "seen_pairs": seen_together, "half_life_s": half_life_s}
