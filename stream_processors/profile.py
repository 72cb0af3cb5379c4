"""Per-user behaviour aggregate and the fold that builds it. Pure: no Kafka, no database.

``UserProfile.apply`` is deterministic given the events in arrival order, and
counts an event id at most once within the last ``dedupe_window`` ids of that
user, so a redelivered event (client retry, worker restart) changes nothing.

State is bounded whatever a client sends: ids longer than ``LONG_ID_CHARS`` are remembered as a
digest (only compared, never shown), at most ``MAX_PRODUCTS_REMEMBERED`` viewed products are kept
(``distinct_products_viewed`` counts on past them; a product seen again after it was forgotten
counts again), and a cart holds at most ``MAX_CART_LINES`` products (adds of more still count).

Orders are distinct order ids: an ``Order Completed`` whose ``order_id`` is
among the user's last ``dedupe_window`` order ids (a reloaded thank-you page)
adds neither an order nor revenue. ``revenue`` is net: refunds subtract the
amount refunded, so it can be negative when a refund's order predates the data.
"""

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from hashlib import blake2b

import orjson

from spoor.events import Event, EventKind

ZERO = Decimal(0)
LONG_ID_CHARS = 40  # a UUID fits as it is
MAX_PRODUCTS_REMEMBERED = 1000
MAX_CART_LINES = 100


def compact_id(value: str) -> str:
    """An id as the state remembers it: as it is, or a 128-bit digest of a long one."""
    if len(value) <= LONG_ID_CHARS:
        return value
    return "#" + blake2b(value.encode(), digest_size=16).hexdigest()

KIND_COUNTERS = {
    EventKind.PAGE_VIEW: "page_views",
    EventKind.PRODUCT_VIEW: "product_views",
    EventKind.CLICK: "clicks",
    EventKind.CART_ADD: "cart_adds",
    EventKind.CART_REMOVE: "cart_removes",
    EventKind.CHECKOUT: "checkouts",
}


@dataclass(slots=True)
class UserProfile:
    user_key: str
    user_id: str | None = None
    events: int = 0
    page_views: int = 0
    product_views: int = 0
    clicks: int = 0
    cart_adds: int = 0
    cart_removes: int = 0
    checkouts: int = 0
    orders: int = 0
    revenue: Decimal = ZERO
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    products_viewed: dict[str, None] = field(default_factory=dict)  # compact ids, oldest first
    distinct_products: int = 0
    cart: dict[str, list] = field(default_factory=dict)  # product id -> [quantity, unit price]
    recent_event_ids: deque = field(default_factory=deque)
    recent_order_ids: deque = field(default_factory=deque)

    @property
    def cart_value(self) -> Decimal:
        return sum((quantity * price for quantity, price in self.cart.values()), ZERO)

    def apply(self, event: Event, dedupe_window: int) -> bool:
        """Fold one event in. Returns False (and changes nothing) for a duplicate."""
        event_id = compact_id(event.event_id)
        if event_id in self.recent_event_ids:
            return False
        self.recent_event_ids.append(event_id)
        while len(self.recent_event_ids) > dedupe_window:
            self.recent_event_ids.popleft()

        self.events += 1
        if event.user_id:
            self.user_id = event.user_id
        at = event.event_time
        if self.first_seen_at is None or at < self.first_seen_at:
            self.first_seen_at = at
        if self.last_seen_at is None or at > self.last_seen_at:
            self.last_seen_at = at

        counter = KIND_COUNTERS.get(event.kind)
        if counter:
            setattr(self, counter, getattr(self, counter) + 1)
        if event.kind == EventKind.PRODUCT_VIEW and event.product_id:
            self._viewed(compact_id(event.product_id))
        elif event.kind == EventKind.CART_ADD and event.product_id:
            if event.product_id not in self.cart and len(self.cart) >= MAX_CART_LINES:
                return True
            quantity, price = self.cart.get(event.product_id, [0, ZERO])
            self.cart[event.product_id] = [quantity + (event.quantity or 1), event.price or price]
        elif event.kind == EventKind.CART_REMOVE and event.product_id in self.cart:
            quantity, price = self.cart[event.product_id]
            left = quantity - (event.quantity or 1)
            if left > 0:
                self.cart[event.product_id] = [left, price]
            else:
                del self.cart[event.product_id]
        elif event.kind == EventKind.PURCHASE:
            self._apply_purchase(event, dedupe_window)
        elif event.kind == EventKind.REFUND:
            self.revenue -= event.revenue or ZERO
        return True

    def _viewed(self, product: str) -> None:
        if product in self.products_viewed:
            return
        self.distinct_products += 1
        self.products_viewed[product] = None
        if len(self.products_viewed) > MAX_PRODUCTS_REMEMBERED:
            del self.products_viewed[next(iter(self.products_viewed))]

    def _apply_purchase(self, event: Event, dedupe_window: int) -> None:
        if event.order_id is not None:
            order_id = compact_id(event.order_id)
            if order_id in self.recent_order_ids:
                return
            self.recent_order_ids.append(order_id)
            while len(self.recent_order_ids) > dedupe_window:
                self.recent_order_ids.popleft()
        self.orders += 1
        self.revenue += event.revenue or ZERO
        self.cart.clear()
        at = event.event_time
        if self.first_purchase_at is None or at < self.first_purchase_at:
            self.first_purchase_at = at
        if self.last_purchase_at is None or at > self.last_purchase_at:
            self.last_purchase_at = at

    def row(self) -> dict:
        """The ``user_profiles`` row for this state."""
        return {
            "user_key": self.user_key, "user_id": self.user_id,
            "events": self.events, "page_views": self.page_views,
            "product_views": self.product_views, "clicks": self.clicks,
            "cart_adds": self.cart_adds, "cart_removes": self.cart_removes,
            "checkouts": self.checkouts, "orders": self.orders, "revenue": self.revenue,
            "distinct_products_viewed": self.distinct_products,
            "cart_value": self.cart_value,
            "first_seen_at": self.first_seen_at, "last_seen_at": self.last_seen_at,
            "first_purchase_at": self.first_purchase_at, "last_purchase_at": self.last_purchase_at,
        }

    def encode(self) -> bytes:
        return orjson.dumps({
            "user_key": self.user_key, "user_id": self.user_id,
            "counts": [self.events, self.page_views, self.product_views, self.clicks,
                       self.cart_adds, self.cart_removes, self.checkouts, self.orders],
            "revenue": str(self.revenue),
            "times": [_iso(self.first_seen_at), _iso(self.last_seen_at),
                      _iso(self.first_purchase_at), _iso(self.last_purchase_at)],
            "products_viewed": list(self.products_viewed),
            "distinct_products": self.distinct_products,
            "cart": {pid: [q, str(p)] for pid, (q, p) in self.cart.items()},
            "recent_event_ids": list(self.recent_event_ids),
            "recent_order_ids": list(self.recent_order_ids),
        })

    @classmethod
    def decode(cls, raw: bytes) -> "UserProfile":
        data = orjson.loads(raw)
        counts = data["counts"]
        times = [datetime.fromisoformat(t) if t else None for t in data["times"]]
        return cls(
            user_key=data["user_key"], user_id=data["user_id"],
            events=counts[0], page_views=counts[1], product_views=counts[2], clicks=counts[3],
            cart_adds=counts[4], cart_removes=counts[5], checkouts=counts[6], orders=counts[7],
            revenue=Decimal(data["revenue"]),
            first_seen_at=times[0], last_seen_at=times[1],
            first_purchase_at=times[2], last_purchase_at=times[3],
            products_viewed=dict.fromkeys(map(compact_id, data["products_viewed"])),
            distinct_products=data.get("distinct_products", len(data["products_viewed"])),  # absent before bounds
            cart={pid: [q, Decimal(p)] for pid, (q, p) in data["cart"].items()},
            # compact_id again: states written before the bounds hold long ids as they were
            recent_event_ids=deque(map(compact_id, data["recent_event_ids"])),
            recent_order_ids=deque(map(compact_id, data.get("recent_order_ids", ()))),  # absent in states written before distinct orders
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
