"""Behavioural triggers of one user: episodes, deadlines and firing. Pure, event-time driven.

Kinds and episodes (an episode fires at most once; ``fired_at`` is its deadline in event time):
- ``cart_abandonment``: opens at the first cart add after an empty cart, an order or the previous
  firing; its deadline is the last cart add + ``cart_delay_s``. An order before the deadline, or the
  cart emptied by removals, closes it without firing. Episode id: the opening time.
- ``browse_abandonment``: a product viewed ``browse_views`` times with no cart add of it (and no
  order) since its first view; deadline: the last view + ``browse_delay_s``. A cart add of that
  product or an order closes it. Episode id: ``<product id>@<first view time>``.
- ``win_back``: no event for ``win_back_s`` after the latest one. Episode id: the latest event time.

Nothing here reads a clock: ``fire_due(now)`` fires what is due at event time ``now``. The worker
calls it with the user's own event time and with the partition's watermark, both minus the allowed
lateness, so the outcome does not depend on how events were batched.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

import orjson

from spoor.events import Event, EventKind
from spoor.stream_processors.profile import MAX_CART_LINES, compact_id  # the profile's cart bound: one cart, one bound

CART, BROWSE, WIN_BACK = "cart_abandonment", "browse_abandonment", "win_back"
TRIGGER_SCHEMA = "spoor.trigger/1"
MAX_BROWSED = 50  # products followed per user; the least recently viewed is dropped past it


@dataclass(frozen=True, slots=True)
class TriggerRules:
    cart_delay_s: float = 3600.0
    browse_views: int = 3
    browse_delay_s: float = 3600.0
    win_back_s: float = 30 * 86400.0


def stamp(at: float) -> str:
    """A compact UTC time for episode ids: 20191001T000000.000Z."""
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Triggers:
    cart: list | None = None  # [opened, last add, {product id: [quantity, unit price str]}]
    browsed: dict = field(default_factory=dict)  # product id -> [views, first view, last view, category]
    last_activity: float | None = None
    win_back_fired_for: float | None = None

    def observe(self, event: Event, at: float) -> None:
        self.last_activity = at if self.last_activity is None else max(self.last_activity, at)
        kind, product = event.kind, event.product_id
        if kind == EventKind.PRODUCT_VIEW and product:
            views, first, last, _ = self.browsed.get(product, [0, at, at, None])
            self.browsed[product] = [views + 1, min(first, at), max(last, at), event.category]
            if len(self.browsed) > MAX_BROWSED:
                del self.browsed[min(self.browsed, key=lambda p: self.browsed[p][2])]
        elif kind == EventKind.CART_ADD:
            self.browsed.pop(product, None)
            if self.cart is None:
                self.cart = [at, at, {}]
            self.cart[1] = max(self.cart[1], at)
            if product and (product in self.cart[2] or len(self.cart[2]) < MAX_CART_LINES):
                quantity, price = self.cart[2].get(product, [0, None])
                price = str(event.price) if event.price is not None else price
                self.cart[2][product] = [quantity + (event.quantity or 1), price]
        elif kind == EventKind.CART_REMOVE and self.cart and product in self.cart[2]:
            left = self.cart[2][product][0] - (event.quantity or 1)
            if left > 0:
                self.cart[2][product][0] = left
            else:
                del self.cart[2][product]
            if not self.cart[2]:
                self.cart = None
        elif kind == EventKind.PURCHASE:
            self.cart = None
            self.browsed.clear()

    def deadlines(self, rules: TriggerRules) -> list[tuple[float, str, str | None]]:
        """(deadline, kind, product id for browse) of every open episode."""
        due = []
        if self.cart:
            due.append((self.cart[1] + rules.cart_delay_s, CART, None))
        for product, (views, _first, last, _category) in self.browsed.items():
            if views >= rules.browse_views:
                due.append((last + rules.browse_delay_s, BROWSE, product))
        if self.last_activity is not None and self.win_back_fired_for != self.last_activity:
            due.append((self.last_activity + rules.win_back_s, WIN_BACK, None))
        return sorted(due, key=lambda d: (d[0], d[1], d[2] or ""))

    def next_deadline(self, rules: TriggerRules) -> float | None:
        due = self.deadlines(rules)
        return due[0][0] if due else None

    def fire_due(self, user_key: str, now: float, rules: TriggerRules) -> list[dict]:
        """Fire every episode whose deadline is at or before ``now``; returns the trigger records."""
        fired = []
        for deadline, kind, product in self.deadlines(rules):
            if deadline > now:
                break
            if kind == CART:
                opened, last_add, items = self.cart
                lines = [{"product_id": p, "quantity": q, "price": price} for p, (q, price) in sorted(items.items())]
                value = sum((Decimal(price) * q for _p, (q, price) in items.items() if price is not None), Decimal(0))
                episode = stamp(opened)
                details = {"items": lines, "cart_value": str(value), "cart_opened_at": iso(opened),
                           "last_cart_add_at": iso(last_add), "delay_s": rules.cart_delay_s}
                self.cart = None
            elif kind == BROWSE:
                views, first, last, category = self.browsed.pop(product)
                episode = f"{compact_id(product)}@{stamp(first)}"  # within the 256 characters of its column
                details = {"product_id": product, "category": category, "views": views,
                           "first_viewed_at": iso(first), "last_viewed_at": iso(last),
                           "delay_s": rules.browse_delay_s}
            else:
                episode = stamp(self.last_activity)
                details = {"last_activity_at": iso(self.last_activity),
                           "inactive_days": rules.win_back_s / 86400.0}
                self.win_back_fired_for = self.last_activity
            fired.append({"trigger_id": f"{kind}:{user_key}:{episode}", "kind": kind, "user_key": user_key,
                          "episode": episode, "fired_at": iso(deadline), "details": details})
        return fired

    def encode(self) -> list:
        return [self.cart, self.browsed, self.last_activity, self.win_back_fired_for]

    @classmethod
    def decode(cls, data: list) -> "Triggers":
        return cls(*data)


def trigger_message(trigger: dict) -> bytes:
    """The JSON value of a message on the triggers topic (schema in docs/analytics.md, "Behavioural triggers")."""
    return orjson.dumps({"schema": TRIGGER_SCHEMA, **trigger})
