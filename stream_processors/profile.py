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
Each remembered order id keeps its time and revenue, and each cart line the times it was first and
last added: what ``UserProfile.absorb`` (one shopper's two keys made one, issue 21) needs to fold
another key's state in as an in-order fold of both keys' events would have.
"""

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
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
    # Beside each of recent_order_ids: [epoch seconds, revenue str] of the order as counted, or None
    # (unknown: states written before issue 21).
    recent_order_facts: deque = field(default_factory=deque)
    # product id -> [first add, last add] (epoch seconds) of each cart line since it was last empty;
    # a line without times (states written before issue 21) is dated by the profile's times.
    cart_added: dict[str, list] = field(default_factory=dict)

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
            stamp = at.timestamp()
            first, last = self.cart_added.get(event.product_id, (stamp, stamp))
            self.cart_added[event.product_id] = [min(first, stamp), max(last, stamp)]
        elif event.kind == EventKind.CART_REMOVE and event.product_id in self.cart:
            quantity, price = self.cart[event.product_id]
            left = quantity - (event.quantity or 1)
            if left > 0:
                self.cart[event.product_id] = [left, price]
            else:
                del self.cart[event.product_id]
                self.cart_added.pop(event.product_id, None)
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
            self.recent_order_facts.append([event.event_time.timestamp(), str(event.revenue or ZERO)])
            while len(self.recent_order_ids) > dedupe_window:
                self.recent_order_ids.popleft()
                self.recent_order_facts.popleft()
        self.orders += 1
        self.revenue += event.revenue or ZERO
        self.cart.clear()
        self.cart_added.clear()
        at = event.event_time
        if self.first_purchase_at is None or at < self.first_purchase_at:
            self.first_purchase_at = at
        if self.last_purchase_at is None or at > self.last_purchase_at:
            self.last_purchase_at = at

    def absorb(self, other: "UserProfile", dedupe_window: int) -> None:
        """Fold another key's profile of the same shopper into this one (issue 21: an anonymous id
        joined to its user). The caller applies a merge once; ``other`` is not to be used after it.

        Afterwards this is, as nearly as the bounded state allows, the profile that folding both
        keys' events in time order into one user keyed ``self.user_key`` gives (events deduplicated
        by id, orders by order id). Exact:
        - the counts (they add), first/last seen (min/max), ``user_id`` (this key's, else the other's);
        - ``orders`` and ``revenue``: an order id both keys remember counts once, with the revenue of
          its earlier occurrence (each remembered order keeps its time and revenue), and the first/last
          purchase times leave out the later occurrence when its key remembers all its orders;
        - ``distinct_products_viewed``: a product both keys remember counts once;
        - the cart: a line survives unless the other key's last purchase came after its last add; a
          product in both carts adds its quantities and takes the price of its later add.
        Order (arrival order is all the lists keep): the key last seen earlier is taken as the older,
        its ids, products and cart lines first; the newest ``dedupe_window`` event and order ids stay.

        Approximate, because the state does not hold what it would take:
        - an event id both keys remember (one event delivered under both keys) is counted twice;
        - a repeated order id: when its later key holds orders it no longer remembers (past
          ``dedupe_window``, or without an order id), first/last_purchase_at may keep the later
          occurrence's time; its revenue is the other occurrence's when this one's is unknown (states
          written before issue 21), nothing is taken off when neither is known; and the later
          occurrence emptied its key's cart, which the in-order fold would not have done;
        - a cart line added both before and after the other key's last purchase keeps its whole
          quantity; a removal under one key of a line the other key added is lost (the line stays);
          lines without times (older states) count as added at their key's last event; past
          ``MAX_CART_LINES`` lines, the older key's come first;
        - past ``MAX_PRODUCTS_REMEMBERED`` products, one that a key forgot and the other remembers
          counts twice, and the oldest remembered are dropped first.
        """
        older, newer = (self, other) if _seen_before(self, other) else (other, self)
        repeated = duplicate_orders(dict(zip(self.recent_order_ids, self.recent_order_facts)),
                                    dict(zip(other.recent_order_ids, other.recent_order_facts)))
        mine = _purchase_span(self, {oid for oid, mine_twice, _d, _k in repeated if mine_twice})
        theirs = _purchase_span(other, {oid for oid, mine_twice, _d, _k in repeated if not mine_twice})
        lines = _cart_after(older, (mine if older is other else theirs)[1]) + \
            _cart_after(newer, (mine if newer is other else theirs)[1])

        for name in KIND_COUNTERS.values():
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.events += other.events
        self.orders += other.orders - len(repeated)
        twice = [order_revenue(duplicate, kept) for _oid, _mine, duplicate, kept in repeated]
        self.revenue += other.revenue - sum((Decimal(r) for r in twice if r is not None), ZERO)
        self.user_id = self.user_id or other.user_id
        self.first_seen_at = _earliest(self.first_seen_at, other.first_seen_at)
        self.last_seen_at = _latest(self.last_seen_at, other.last_seen_at)
        self.first_purchase_at = _earliest(mine[0], theirs[0])
        self.last_purchase_at = _latest(mine[1], theirs[1])

        both = sum(1 for product in other.products_viewed if product in self.products_viewed)
        self.distinct_products += other.distinct_products - both
        viewed = dict.fromkeys([*older.products_viewed, *newer.products_viewed])
        while len(viewed) > MAX_PRODUCTS_REMEMBERED:
            del viewed[next(iter(viewed))]
        self.products_viewed = viewed

        event_ids = list(dict.fromkeys([*older.recent_event_ids, *newer.recent_event_ids]))
        self.recent_event_ids = deque(event_ids[-dedupe_window:] if dedupe_window > 0 else ())
        kept = {oid: kept_fact for oid, _mine, _duplicate, kept_fact in repeated}
        orders: dict[str, list | None] = {}
        for oid, fact in [*zip(older.recent_order_ids, older.recent_order_facts),
                          *zip(newer.recent_order_ids, newer.recent_order_facts)]:
            if oid not in orders:
                orders[oid] = kept.get(oid, fact)
        order_ids = list(orders)[-dedupe_window:] if dedupe_window > 0 else []
        self.recent_order_ids = deque(order_ids)
        self.recent_order_facts = deque(orders[oid] for oid in order_ids)

        cart: dict[str, list] = {}
        added: dict[str, list | None] = {}
        for product, (quantity, price), times in lines:  # the older key's first
            if product in cart:
                held, held_price = cart[product]
                held_times = added[product]
                this_later = held_times is None or times is None or times[1] >= held_times[1]
                later, earlier = (price, held_price) if this_later else (held_price, price)
                cart[product] = [held + quantity, later or earlier]
                added[product] = None if held_times is None or times is None else \
                    [min(held_times[0], times[0]), max(held_times[1], times[1])]
            elif len(cart) < MAX_CART_LINES:
                cart[product] = [quantity, price]
                added[product] = times
        self.cart = cart
        self.cart_added = {product: times for product, times in added.items() if times is not None}

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
            "recent_order_facts": list(self.recent_order_facts),
            "cart_added": self.cart_added,
        })

    @classmethod
    def decode(cls, raw: bytes) -> "UserProfile":
        data = orjson.loads(raw)
        counts = data["counts"]
        times = [datetime.fromisoformat(t) if t else None for t in data["times"]]
        # absent in states written before distinct orders
        order_ids = deque(map(compact_id, data.get("recent_order_ids", ())))
        cart = {pid: [q, Decimal(p)] for pid, (q, p) in data["cart"].items()}
        return cls(
            user_key=data["user_key"], user_id=data["user_id"],
            events=counts[0], page_views=counts[1], product_views=counts[2], clicks=counts[3],
            cart_adds=counts[4], cart_removes=counts[5], checkouts=counts[6], orders=counts[7],
            revenue=Decimal(data["revenue"]),
            first_seen_at=times[0], last_seen_at=times[1],
            first_purchase_at=times[2], last_purchase_at=times[3],
            products_viewed=dict.fromkeys(map(compact_id, data["products_viewed"])),
            distinct_products=data.get("distinct_products", len(data["products_viewed"])),  # absent before bounds
            cart=cart,
            # compact_id again: states written before the bounds hold long ids as they were
            recent_event_ids=deque(map(compact_id, data["recent_event_ids"])),
            recent_order_ids=order_ids,
            # absent (unknown) in states written before issue 21
            recent_order_facts=deque(aligned(data.get("recent_order_facts", ()), len(order_ids))),
            cart_added={pid: times for pid, times in data.get("cart_added", {}).items() if pid in cart},
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def aligned(facts, length: int) -> list:
    """``facts`` as long as the ids they stand beside: the last ones, or unknown (None) ones first."""
    facts = list(facts)[-length:] if length else []
    return [None] * (length - len(facts)) + facts


def duplicate_orders(mine: dict, theirs: dict) -> list[tuple[str, bool, list | None, list | None]]:
    """Order ids two keys both remember (id -> [epoch seconds, revenue str] or None): for each,
    (id, whether the occurrence the in-order fold skips is ``mine``, its facts, the kept one's).
    The earlier occurrence is kept; on a tie, or a time unknown, ``mine`` is."""
    found = []
    for oid, my_fact in mine.items():
        if oid not in theirs:
            continue
        their_fact = theirs[oid]
        mine_twice = my_fact is not None and their_fact is not None and their_fact[0] < my_fact[0]
        found.append((oid, mine_twice, my_fact if mine_twice else their_fact, their_fact if mine_twice else my_fact))
    return found


def order_revenue(duplicate: list | None, kept: list | None) -> str | None:
    """The revenue a repeated order id added twice: its skipped occurrence's, else the kept one's."""
    for fact in (duplicate, kept):
        if fact is not None:
            return fact[1]
    return None


def purchase_times(order_ids, facts, orders: int, skipped: set) -> list[float] | None:
    """Times of every order a key counted, less ``skipped`` ids, when it remembers all of them."""
    pairs = list(zip(order_ids, facts))
    if orders != len(pairs) or any(fact is None for _oid, fact in pairs):
        return None
    return [fact[0] for oid, fact in pairs if oid not in skipped]


def _purchase_span(profile: UserProfile, skipped: set) -> tuple[datetime | None, datetime | None]:
    """First and last purchase of ``profile`` without the orders in ``skipped`` (when it can tell)."""
    first, last = profile.first_purchase_at, profile.last_purchase_at
    if not skipped:
        return first, last
    times = purchase_times(profile.recent_order_ids, profile.recent_order_facts, profile.orders, skipped)
    if times is None:
        return first, last
    if not times:
        return None, None
    return _at(min(times), first), _at(max(times), last)


def _at(stamp: float, known: datetime | None) -> datetime:
    if known is not None and known.timestamp() == stamp:
        return known
    return datetime.fromtimestamp(stamp, timezone.utc)


def _cart_after(profile: UserProfile, purchase: datetime | None) -> list[tuple[str, list, list | None]]:
    """(product, [quantity, price], times) of the cart lines of ``profile`` a purchase at ``purchase``
    under another key did not empty: those last added after it."""
    bought = None if purchase is None else purchase.timestamp()
    lines = []
    for product, (quantity, price) in profile.cart.items():
        times = profile.cart_added.get(product)
        if bought is not None:
            last_add = times[1] if times is not None else \
                (profile.last_seen_at.timestamp() if profile.last_seen_at else float("-inf"))
            if last_add <= bought:
                continue
        lines.append((product, [quantity, price], None if times is None else list(times)))
    return lines


def _seen_before(first: UserProfile, second: UserProfile) -> bool:
    """Whether ``first`` was last seen before ``second`` (on a tie, or without times: no)."""
    return first.last_seen_at is not None and second.last_seen_at is not None \
        and first.last_seen_at < second.last_seen_at


def _earliest(a, b):
    return b if a is None else a if b is None else min(a, b)


def _latest(a, b):
    return b if a is None else a if b is None else max(a, b)
