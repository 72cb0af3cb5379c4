"""Per-user rolling windows, RFM inputs and lifecycle stage: the ``user_activity`` row. Pure.

What a row means (as of ``as_of``, an event time: the user's latest event, or a lifecycle threshold
that passed since):
- ``<kind>_1d`` / ``_7d`` / ``_30d``: events of that kind on the UTC calendar day of ``as_of``, on
  that day and the 6 / 29 days before it. ``revenue_<window>`` likewise (sum of order revenue).
  Calendar-day buckets keep the state small (at most 30 per user) and the figures exact.
- ``revenue_<window>`` is net of refunds made in the window; an order id seen among the user's last
  ``order_dedupe`` orders (a reloaded thank-you page) counts once, as in ``user_profiles``.
- ``frequency``: orders placed (all time); ``monetary``: their revenue net of refunds (all time);
  ``recency_days``: whole days from the last order to ``as_of`` (NULL without an order).
- ``favourite_categories``: up to 3 categories with the most product views + cart adds + ordered
  lines over the 30-day window (ties by name); ``favourite_category`` is the first.
- ``lifecycle_stage`` from the days without any event before ``as_of`` (``idle``) and the first
  event: churned if idle >= 180, dormant if idle >= 90, at_risk if idle >= 30, else new if the first
  event is less than 30 days old, else active. The worker refreshes the row when a threshold passes.

``Activity.absorb`` folds another key's activity of the same shopper in (issue 21); each remembered
order id keeps its time and revenue for it.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from spoor.events import Event, EventKind
from spoor.stream_processors.profile import aligned, duplicate_orders, order_revenue, purchase_times

DAY = 86400.0
WINDOWS = {"1d": 1, "7d": 7, "30d": 30}
COUNTED = {EventKind.PAGE_VIEW: 0, EventKind.PRODUCT_VIEW: 1, EventKind.CART_ADD: 2,
           EventKind.CHECKOUT: 3, EventKind.PURCHASE: 4}
COUNT_NAMES = ("page_views", "product_views", "cart_adds", "checkouts", "purchases")
WINDOW_COLUMNS = {window: [f"{name}_{window}" for name in COUNT_NAMES] for window in WINDOWS}
NEW_DAYS, AT_RISK_DAYS, DORMANT_DAYS, CHURNED_DAYS = 30, 30, 90, 180
FAVOURITES = 3
MAX_CATEGORIES_PER_DAY = 50  # bounds state; categories past it on one day are not counted


def lifecycle_stage(first_seen: float, last_seen: float, as_of: float) -> str:
    idle = as_of - last_seen
    if idle >= CHURNED_DAYS * DAY:
        return "churned"
    if idle >= DORMANT_DAYS * DAY:
        return "dormant"
    if idle >= AT_RISK_DAYS * DAY:
        return "at_risk"
    return "new" if as_of - first_seen < NEW_DAYS * DAY else "active"


def _day(at: float) -> int:
    return int(at // DAY)


def _utc(at: float | None) -> datetime | None:
    return None if at is None else datetime.fromtimestamp(at, timezone.utc)


@dataclass(slots=True)
class Activity:
    days: dict = field(default_factory=dict)  # UTC day number -> [5 counts, revenue str, {category: n}]
    first_seen: float | None = None
    last_seen: float | None = None
    orders: int = 0
    revenue: str = "0"
    last_purchase: float | None = None
    refreshed_to: float | None = None  # latest lifecycle threshold the row was refreshed at
    recent_order_ids: list = field(default_factory=list)
    # Beside each of recent_order_ids: [time, revenue str] of the order, or None (unknown: states
    # written before issue 21).
    order_facts: list = field(default_factory=list)

    def is_repeated_order(self, event: Event) -> bool:
        return event.kind == EventKind.PURCHASE and event.order_id is not None \
            and event.order_id in self.recent_order_ids

    def add(self, event: Event, at: float, order_dedupe: int = 512) -> None:
        self.first_seen = at if self.first_seen is None else min(self.first_seen, at)
        self.last_seen = at if self.last_seen is None else max(self.last_seen, at)
        if self.is_repeated_order(event):
            return
        signed_revenue = None
        if event.kind == EventKind.PURCHASE:
            if event.order_id is not None:
                self.recent_order_ids.append(event.order_id)
                self.order_facts.append([at, str(event.revenue or Decimal(0))])
                del self.recent_order_ids[:-order_dedupe]
                del self.order_facts[:-order_dedupe]
            self.orders += 1
            signed_revenue = event.revenue or Decimal(0)
            self.last_purchase = at if self.last_purchase is None else max(self.last_purchase, at)
        elif event.kind == EventKind.REFUND:
            signed_revenue = -(event.revenue or Decimal(0))
        if signed_revenue:
            self.revenue = str(Decimal(self.revenue) + signed_revenue)
        day = _day(at)
        oldest = _day(self.last_seen) - (WINDOWS["30d"] - 1)
        if day < oldest:
            return  # outside every window of every later as_of
        for old in [d for d in self.days if d < oldest]:
            del self.days[old]
        bucket = self.days.setdefault(day, [0, 0, 0, 0, 0, "0", {}])
        slot = COUNTED.get(event.kind)
        if slot is not None:
            bucket[slot] += 1
        if signed_revenue:
            bucket[5] = str(Decimal(bucket[5]) + signed_revenue)
        if event.kind == EventKind.PURCHASE:
            categories = [line.category for line in event.products] or [event.category]
        elif event.kind in (EventKind.PRODUCT_VIEW, EventKind.CART_ADD):
            categories = [event.category]
        else:
            categories = []
        counts = bucket[6]
        for category in categories:
            if category and (category in counts or len(counts) < MAX_CATEGORIES_PER_DAY):
                counts[category] = counts.get(category, 0) + 1

    def repeated_orders(self, other: "Activity") -> list[tuple[bool, float | None, str | None]]:
        """Orders both keys counted (an order id both remember): for each, (whether the occurrence an
        in-order fold skips, the later one, is this key's, its time, the revenue it added twice)."""
        repeated = duplicate_orders(dict(zip(self.recent_order_ids, self.order_facts)),
                                    dict(zip(other.recent_order_ids, other.order_facts)))
        return [(mine_twice, None if duplicate is None else duplicate[0], order_revenue(duplicate, kept))
                for _oid, mine_twice, duplicate, kept in repeated]

    def absorb(self, other: "Activity", order_dedupe: int = 512) -> None:
        """Fold another key's activity of the same shopper into this one (issue 21), as the in-order
        fold of both keys' events would have built it. The caller applies a merge once.

        Exact: the day buckets (counts, revenue and category counts add), first/last seen, ``frequency``
        and ``monetary`` (an order id both keys remember counts once, the later occurrence left out of
        its day too), and ``last_purchase`` (without that occurrence, when its key remembers all its
        orders). The lifecycle refresh goes as far as either key's went: the thresholds of the merged
        times up to the later of their ``as_of``. Order ids: the key last seen earlier first, the newest
        ``order_dedupe`` kept.

        Approximate: the categories of a repeated order's later occurrence stay counted (the state
        keeps an order's time and revenue, not its lines); its revenue is the other occurrence's when
        its own is unknown (older states), and its time unknown leaves its day as it was;
        ``last_purchase`` keeps it when its key counted orders it no longer remembers; past
        ``MAX_CATEGORIES_PER_DAY`` categories in a day, the ones kept are this key's first.
        """
        if other.last_seen is None:
            return
        repeated = duplicate_orders(dict(zip(self.recent_order_ids, self.order_facts)),
                                    dict(zip(other.recent_order_ids, other.order_facts)))
        known_now = other.as_of if self.last_seen is None else max(self.as_of, other.as_of)
        self_older = self.last_seen is not None and self.last_seen < other.last_seen
        older, newer = (self, other) if self_older else (other, self)
        last_purchases = []
        for side, mine in ((self, True), (other, False)):
            skipped = {oid for oid, mine_twice, _d, _k in repeated if mine_twice == mine}
            times = None if not skipped else \
                purchase_times(side.recent_order_ids, side.order_facts, side.orders, skipped)
            last_purchases.append(side.last_purchase if times is None else max(times, default=None))

        for day, bucket in other.days.items():
            held = self.days.get(day)
            if held is None:
                self.days[day] = [*bucket[:6], dict(bucket[6])]
                continue
            for i in range(5):
                held[i] += bucket[i]
            if bucket[5] != "0":
                held[5] = str(Decimal(held[5]) + Decimal(bucket[5]))
            counts = held[6]
            for category, n in bucket[6].items():
                if category in counts or len(counts) < MAX_CATEGORIES_PER_DAY:
                    counts[category] = counts.get(category, 0) + n
        twice = Decimal(0)
        for _oid, _mine, duplicate, kept in repeated:
            revenue = order_revenue(duplicate, kept)
            twice += Decimal(revenue) if revenue is not None else 0
            bucket = self.days.get(_day(duplicate[0])) if duplicate is not None else None
            if bucket is not None and bucket[4] > 0:
                bucket[4] -= 1
                if revenue is not None and Decimal(revenue):
                    bucket[5] = str(Decimal(bucket[5]) - Decimal(revenue))

        self.first_seen = other.first_seen if self.first_seen is None else min(self.first_seen, other.first_seen)
        self.last_seen = other.last_seen if self.last_seen is None else max(self.last_seen, other.last_seen)
        oldest = _day(self.last_seen) - (WINDOWS["30d"] - 1)
        for old in [d for d in self.days if d < oldest]:
            del self.days[old]
        self.orders += other.orders - len(repeated)
        self.revenue = str(Decimal(self.revenue) + Decimal(other.revenue) - twice)
        self.last_purchase = max((t for t in last_purchases if t is not None), default=None)

        kept = {oid: kept_fact for oid, _mine, _duplicate, kept_fact in repeated}
        orders: dict = {}
        for oid, fact in [*zip(older.recent_order_ids, older.order_facts),
                          *zip(newer.recent_order_ids, newer.order_facts)]:
            if oid not in orders:
                orders[oid] = kept.get(oid, fact)
        self.recent_order_ids = list(orders)[-order_dedupe:] if order_dedupe > 0 else []
        self.order_facts = [orders[oid] for oid in self.recent_order_ids]

        self.refreshed_to = None
        refresh = self.next_refresh()
        while refresh is not None and refresh <= known_now:
            self.refresh(refresh)
            refresh = self.next_refresh()

    @property
    def as_of(self) -> float:
        return max(self.last_seen, self.refreshed_to or self.last_seen)

    def next_refresh(self) -> float | None:
        """Event time of the next lifecycle threshold after ``as_of``, if any."""
        if self.last_seen is None:
            return None
        thresholds = [self.first_seen + NEW_DAYS * DAY] + [
            self.last_seen + days * DAY for days in (AT_RISK_DAYS, DORMANT_DAYS, CHURNED_DAYS)]
        later = [t for t in thresholds if t > self.as_of]
        return min(later) if later else None

    def refresh(self, at: float) -> None:
        self.refreshed_to = max(self.refreshed_to or at, at)

    def row(self, user_key: str) -> dict:
        as_of = self.as_of
        today = _day(as_of)
        sums = {window: [0, 0, 0, 0, 0] for window in WINDOWS}
        revenue = {window: Decimal(0) for window in WINDOWS}
        categories: dict[str, int] = {}
        for day, bucket in self.days.items():
            age = today - day
            if not 0 <= age < WINDOWS["30d"]:
                continue
            for window, length in WINDOWS.items():
                if age < length:
                    total = sums[window]
                    for i in range(5):
                        total[i] += bucket[i]
                    if bucket[5] != "0":
                        revenue[window] += Decimal(bucket[5])
            for category, n in bucket[6].items():
                categories[category] = categories.get(category, 0) + n
        row: dict = {"user_key": user_key, "as_of": _utc(as_of)}
        for window in WINDOWS:
            row.update(zip(WINDOW_COLUMNS[window], sums[window]))
            row[f"revenue_{window}"] = revenue[window]
        favourites = sorted(categories, key=lambda c: (-categories[c], c))[:FAVOURITES]
        row.update({
            "frequency": self.orders, "monetary": Decimal(self.revenue),
            "favourite_category": favourites[0] if favourites else None,
            "favourite_categories": favourites,
            "lifecycle_stage": lifecycle_stage(self.first_seen, self.last_seen, as_of),
            "last_seen_at": _utc(self.last_seen), "last_purchase_at": _utc(self.last_purchase),
            "recency_days": None if self.last_purchase is None else int((as_of - self.last_purchase) // DAY),
        })
        return row

    def encode(self) -> list:
        return [[[d, *b] for d, b in self.days.items()], self.first_seen, self.last_seen, self.orders,
                self.revenue, self.last_purchase, self.refreshed_to, self.recent_order_ids, self.order_facts]

    @classmethod
    def decode(cls, data: list) -> "Activity":
        days, first, last, orders, revenue, last_purchase, refreshed, order_ids = data[:8]
        facts = aligned(data[8] if len(data) > 8 else (), len(order_ids))  # absent before issue 21
        return cls({d[0]: d[1:] for d in days}, first, last, orders, revenue, last_purchase, refreshed, order_ids,
                   facts)
