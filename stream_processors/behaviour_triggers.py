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

``Triggers.absorb`` folds another key's episodes of the same shopper in (issue 21), as an in-order
fold of both keys' events would have left them.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import NamedTuple

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


class Seen(NamedTuple):
    """What else a key's state knows that ``Triggers.absorb`` needs: its first event and the times of
    its purchases that it remembers (``UserBehaviour.absorb`` takes them from the activity)."""
    first: float | None = None
    purchases: tuple = ()


OPEN, CLOSED, DUE = "open", "closed", "due"


def _fate(opened: float, last: float, delay_s: float, can_fire: bool, purchases, lateness_s: float,
          bought: list | None = None) -> str:
    """What the other key's purchases did to an episode opened at ``opened`` (last moved at ``last``)
    in the in-order fold: the first one after it opened closed it (``CLOSED``), unless the episode
    fell due before it: then that purchase's event fired it first (``DUE``). ``bought``: [opened,
    last add, purchase] of the other key's cart that its latest purchase closed; when that is the
    purchase and that cart overlapped this episode, the two were one episode, which it closed."""
    after = [p for p in purchases if p > opened]
    if not after:
        return OPEN
    first = min(after)
    if bought is not None and bought[2] == first and _overlap(opened, last, bought[0], bought[1], delay_s, lateness_s):
        return CLOSED
    if can_fire and first > last and first - lateness_s >= last + delay_s:
        return DUE
    return CLOSED


def _overlap(opened: float, last: float, other_opened: float, other_last: float, delay_s: float,
             lateness_s: float) -> bool:
    """Whether two episodes were one in the in-order fold: the later opened before the earlier was due."""
    if other_opened < opened:
        opened, last, other_opened, other_last = other_opened, other_last, opened, last
    return other_opened - lateness_s < last + delay_s


@dataclass(slots=True)
class Triggers:
    cart: list | None = None  # [opened, last add, {product id: [quantity, unit price str]}]
    browsed: dict = field(default_factory=dict)  # product id -> [views, first view, last view, category]
    last_activity: float | None = None
    win_back_fired_for: float | None = None
    last_purchase: float | None = None  # the latest order event (None in states written before issue 21)
    bought_cart: list | None = None  # [opened, last add, purchase at] of the cart the latest order closed

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
            if self.last_purchase is None or at >= self.last_purchase:
                self.last_purchase = at
                self.bought_cart = None if self.cart is None else [self.cart[0], self.cart[1], at]
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
                fired.append(_cart_record(user_key, self.cart, deadline, rules))
                self.cart = None
            elif kind == BROWSE:
                fired.append(_browse_record(user_key, product, self.browsed.pop(product), deadline, rules))
            else:
                fired.append(_win_back_record(user_key, self.last_activity, deadline, rules))
                self.win_back_fired_for = self.last_activity
        return fired

    def absorb(self, other: "Triggers", user_key: str, rules: TriggerRules, lateness_s: float,
               mine: Seen | None = None, theirs: Seen | None = None) -> list[dict]:
        """Fold another key's episodes of the same user into these (issue 21); returns the trigger
        records an in-order fold of both keys' events would have fired on the way (``user_key``'s).
        ``mine``/``theirs``: each key's first event and remembered purchase times. The caller applies
        a merge once; ``other`` is not to be used after it.

        - An episode one key opened is closed when the other key bought after it opened (no
          cart-abandonment trigger for someone who bought), unless it fell due before that purchase
          and before the buying key's own cart (the one that purchase closed) joined it: then it
          fires, at its deadline, as that purchase's event would have fired it first.
        - Two open carts are one episode (opened at the first, its deadline from the last add, the
          lines added up, the price of the later add) unless the later one opened after the earlier
          one was due: then the earlier fires and the later stays. Browsed products likewise, per
          product (views add up); a product in the other key's cart, added after the first view, is
          no longer followed.
        - Win-back follows the latest event of both; the other key's inactivity fires when the first
          event of the later key came ``win_back_s`` (and the lateness) after it.
        Deadlines follow (the caller recomputes its next one). A record fires at its deadline with
        what its episode holds, so an episode left open here fires as the in-order fold fires it.

        Approximate: purchases a key no longer remembers (past its order window, or without an order
        id, other than its last) close nothing; activity of both keys within one episode, where one
        key's own episode then fired or emptied on its own, or was bought by an order other than its
        latest (or, for browsed products, by any), or where one key's views or adds came on both
        sides of the other's purchase, is not split as the in-order fold would split it;
        a removal under one key of a line the other key added is lost; a win-back of a key whose
        activity the other key's interleaves is not fired.
        """
        mine, theirs = mine or Seen(), theirs or Seen()
        fired = []
        my_purchases = {*mine.purchases, *(() if self.last_purchase is None else (self.last_purchase,))}
        their_purchases = {*theirs.purchases, *(() if other.last_purchase is None else (other.last_purchase,))}

        carts = []
        for cart, purchases, bought in ((self.cart, their_purchases, other.bought_cart),
                                        (other.cart, my_purchases, self.bought_cart)):
            if cart is None:
                continue
            fate = _fate(cart[0], cart[1], rules.cart_delay_s, True, purchases, lateness_s, bought)
            if fate == DUE:
                fired.append(_cart_record(user_key, cart, cart[1] + rules.cart_delay_s, rules))
            elif fate == OPEN:
                carts.append([cart[0], cart[1], {p: list(line) for p, line in cart[2].items()}])
        if len(carts) == 2:
            earlier, later = sorted(carts, key=lambda c: c[0])
            if not _overlap(earlier[0], earlier[1], later[0], later[1], rules.cart_delay_s, lateness_s):
                fired.append(_cart_record(user_key, earlier, earlier[1] + rules.cart_delay_s, rules))
                carts = [later]
            else:
                carts = [_join_carts(earlier, later)]
        merged_cart = carts[0] if carts else None

        browsed: dict = {}
        for entries, purchases, cart in ((self.browsed, their_purchases, other.cart),
                                         (other.browsed, my_purchases, self.cart)):
            for product, entry in entries.items():
                views, first, last, _category = entry
                can_fire = views >= rules.browse_views
                fate = _fate(first, last, rules.browse_delay_s, can_fire, purchases, lateness_s)
                if fate == OPEN and cart is not None and product in cart[2] and cart[1] > first:
                    carted_after = cart[0] > last and cart[0] - lateness_s >= last + rules.browse_delay_s
                    fate = DUE if can_fire and carted_after else CLOSED
                if fate == DUE:
                    fired.append(_browse_record(user_key, product, entry, last + rules.browse_delay_s, rules))
                elif fate == OPEN:
                    browsed.setdefault(product, []).append(list(entry))
        for product, entries in browsed.items():
            if len(entries) == 2:
                earlier, later = sorted(entries, key=lambda e: e[1])
                if earlier[0] >= rules.browse_views and later[1] - lateness_s >= earlier[2] + rules.browse_delay_s:
                    fired.append(_browse_record(user_key, product, earlier, earlier[2] + rules.browse_delay_s, rules))
                    entries[:] = [later]
                else:
                    newest = later if later[2] >= earlier[2] else earlier
                    entries[:] = [[earlier[0] + later[0], earlier[1], max(earlier[2], later[2]), newest[3]]]
            browsed[product] = entries[0]
        while len(browsed) > MAX_BROWSED:
            del browsed[min(browsed, key=lambda p: browsed[p][2])]

        if self.last_activity is None or other.last_activity is None:
            last_activity = self.last_activity if other.last_activity is None else other.last_activity
            fired_for = self.win_back_fired_for if other.last_activity is None else other.win_back_fired_for
        else:
            last_activity = max(self.last_activity, other.last_activity)
            ends = [(self.last_activity, self.win_back_fired_for, theirs.first),
                    (other.last_activity, other.win_back_fired_for, mine.first)]
            fired_for = next((f for la, f, _ in ends if la == last_activity and f == la),
                             next(f for la, f, _ in ends if la == last_activity))
            for quiet_since, fired_already, next_first in ends:
                if quiet_since < last_activity and fired_already != quiet_since and next_first is not None \
                        and next_first > quiet_since and next_first - lateness_s >= quiet_since + rules.win_back_s:
                    fired.append(_win_back_record(user_key, quiet_since, quiet_since + rules.win_back_s, rules))

        self.cart = merged_cart
        self.browsed = browsed
        self.last_activity = last_activity
        self.win_back_fired_for = fired_for
        if other.last_purchase is not None and (self.last_purchase is None or other.last_purchase > self.last_purchase):
            self.last_purchase, self.bought_cart = other.last_purchase, other.bought_cart
        return fired

    def encode(self) -> list:
        return [self.cart, self.browsed, self.last_activity, self.win_back_fired_for, self.last_purchase,
                self.bought_cart]

    @classmethod
    def decode(cls, data: list) -> "Triggers":
        return cls(*data)  # four items in states written before issue 21


def _join_carts(earlier: list, later: list) -> list:
    """One cart episode of two that overlapped: opened at the first, moved by the last add."""
    items = earlier[2]
    for product, (quantity, price) in later[2].items():
        if product in items:
            held_quantity, held_price = items[product]
            later_price = price if later[1] >= earlier[1] else held_price
            earlier_price = held_price if later[1] >= earlier[1] else price
            items[product] = [held_quantity + quantity, later_price if later_price is not None else earlier_price]
        elif len(items) < MAX_CART_LINES:
            items[product] = [quantity, price]
    return [earlier[0], max(earlier[1], later[1]), items]


def _record(kind: str, user_key: str, episode: str, deadline: float, details: dict) -> dict:
    return {"trigger_id": f"{kind}:{user_key}:{episode}", "kind": kind, "user_key": user_key,
            "episode": episode, "fired_at": iso(deadline), "details": details}


def _cart_record(user_key: str, cart: list, deadline: float, rules: TriggerRules) -> dict:
    opened, last_add, items = cart
    lines = [{"product_id": p, "quantity": q, "price": price} for p, (q, price) in sorted(items.items())]
    value = sum((Decimal(price) * q for _p, (q, price) in items.items() if price is not None), Decimal(0))
    details = {"items": lines, "cart_value": str(value), "cart_opened_at": iso(opened),
               "last_cart_add_at": iso(last_add), "delay_s": rules.cart_delay_s}
    return _record(CART, user_key, stamp(opened), deadline, details)


def _browse_record(user_key: str, product: str, entry: list, deadline: float, rules: TriggerRules) -> dict:
    views, first, last, category = entry
    episode = f"{compact_id(product)}@{stamp(first)}"  # within the 256 characters of its column
    details = {"product_id": product, "category": category, "views": views,
               "first_viewed_at": iso(first), "last_viewed_at": iso(last), "delay_s": rules.browse_delay_s}
    return _record(BROWSE, user_key, episode, deadline, details)


def _win_back_record(user_key: str, last_activity: float, deadline: float, rules: TriggerRules) -> dict:
    details = {"last_activity_at": iso(last_activity), "inactive_days": rules.win_back_s / 86400.0}
    return _record(WIN_BACK, user_key, stamp(last_activity), deadline, details)


def trigger_message(trigger: dict) -> bytes:
    """The JSON value of a message on the triggers topic (schema in docs/analytics.md, "Behavioural triggers")."""
    return orjson.dumps({"schema": TRIGGER_SCHEMA, **trigger})
