"""A session's journey: its pages in time order, their types, dwell times and searches. Pure.

What a step is (``page_type``): an event that shows the shopper a page, by its kind or name -
``product_view`` -> product, ``cart_add``/``cart_remove`` -> cart, ``checkout`` -> checkout,
``purchase`` (an order counted once) -> purchase, "Products Searched" -> search, "Product List Viewed" /
"Product List Filtered" -> listing, "Cart Viewed" -> cart, "Checkout Step Viewed" / "Payment Info
Entered" -> checkout; a page view by its name (``PAGE_NAMES``), else by its URL path (``PATH_SEGMENTS``),
else "other". Clicks, identifies, refunds and other custom events are no step. A page view and a step of
the same type and the same page URL right after it (a ``page()`` call and its "Product Viewed") are one
step, as is a reload of that page.

Dwell of a step: the visible time a "Page Engagement" event reports for its page (``visible_ms``, the
largest such report for the step: the browser SDK sends the page's total visible time at each hide),
else the time until the session's next step; capped at ``DWELL_CAP_S``. The session's last step has no
next step: its dwell is the visible time if one was sent, else unknown, and it is marked as the exit.
An engagement applies to the latest step before it with the same page URL (without a URL: the latest
step before it); one that matches no step is ignored.

Bounds: at most ``MAX_RECORDS`` steps and engagements per session are kept (later steps are counted in
``page_depth`` but not stored), a search term is folded to lower case with its spaces collapsed and
cut to ``MAX_TERM_CHARS``, a product id is the event's (at most 256 characters). Records are kept
sorted by time (ties in arrival order), so the summary does not depend on the order events arrived in.
"""

import bisect
import zlib

from spoor.events import Event, EventKind

DWELL_CAP_S = 1800.0  # a page "looked at" longer than the default session inactivity gap is not looked at
MAX_RECORDS = 100  # steps and engagements kept per session
MAX_TERM_CHARS = 100
ENGAGED = "engaged"  # the record of a "Page Engagement" event (no page type)

PAGE_TYPES = ("home", "listing", "search", "product", "cart", "checkout", "purchase", "other")
KIND_TYPES = {EventKind.PRODUCT_VIEW: "product", EventKind.CART_ADD: "cart", EventKind.CART_REMOVE: "cart",
              EventKind.CHECKOUT: "checkout", EventKind.PURCHASE: "purchase"}
# Custom events (canonical names: lower case, single spaces) that show a page.
TRACK_TYPES = {"products searched": "search", "product list viewed": "listing", "product list filtered": "listing",
               "cart viewed": "cart", "checkout step viewed": "checkout", "payment info entered": "checkout"}
SEARCHED = "products searched"
ENGAGEMENT = "page engagement"
PAGE_NAMES = {
    **dict.fromkeys(("home", "homepage", "home page", "index", "landing", "landing page", "start"), "home"),
    **dict.fromkeys(("category", "categories", "listing", "product list", "product listing", "collection",
                     "catalog", "catalogue", "shop", "department", "brand", "plp"), "listing"),
    **dict.fromkeys(("search", "search results", "results"), "search"),
    **dict.fromkeys(("product", "product page", "product detail", "product details", "item", "pdp"), "product"),
    **dict.fromkeys(("cart", "basket", "bag", "shopping cart", "shopping bag"), "cart"),
    **dict.fromkeys(("checkout", "payment", "shipping", "delivery", "billing"), "checkout"),
    **dict.fromkeys(("order confirmation", "confirmation", "thank you", "thanks", "receipt", "order completed"),
                    "purchase"),
}
# The first path segment (of those, in order) that names a page type decides; "/" is home.
PATH_SEGMENTS = {
    **dict.fromkeys(("product", "products", "p", "item", "dp"), "product"),
    **dict.fromkeys(("cart", "basket", "bag"), "cart"),
    **dict.fromkeys(("checkout", "payment"), "checkout"),
    **dict.fromkeys(("search",), "search"),
    **dict.fromkeys(("category", "categories", "c", "collections", "collection", "catalog", "shop"), "listing"),
    **dict.fromkeys(("thank-you", "thanks", "order-confirmation", "confirmation"), "purchase"),
}

# A record: [at, page type or ENGAGED, product id, url key, visible ms, search term, result count, cart add 0/1]
AT, TYPE, PRODUCT, URL, VISIBLE, TERM, RESULTS, ADDED = range(8)


def canonical_name(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def page_type(event: Event) -> str | None:
    """The type of page the event shows; None for an event that is no step."""
    kind = event.kind
    if kind in KIND_TYPES:
        return KIND_TYPES[kind]
    if kind == EventKind.PAGE_VIEW:
        return PAGE_NAMES.get(canonical_name(event.name)) or path_type(event.page_url)
    if kind == EventKind.CUSTOM:
        return TRACK_TYPES.get(canonical_name(event.name))
    return None


def path_type(url: str | None) -> str:
    if not url:
        return "other"
    path = url.split("://", 1)[-1].partition("/")[2] if "://" in url else url.lstrip("/")
    segments = path.split("?", 1)[0].split("#", 1)[0].lower().strip("/").split("/")
    if segments == [""]:
        return "home"
    for segment in segments[:8]:
        if segment in PATH_SEGMENTS:
            return PATH_SEGMENTS[segment]
    return "other"


def search_term(query: str | None) -> str | None:
    if not query:
        return None
    return " ".join(query[:4 * MAX_TERM_CHARS].split()).casefold()[:MAX_TERM_CHARS] or None


def _url_key(url: str | None) -> int | None:
    return None if url is None else zlib.crc32(url.encode())  # an id for the page, not the URL itself


class Journey:
    """The records of one session (state) and the summary written for it."""

    __slots__ = ("records", "beyond")

    def __init__(self, records: list | None = None, beyond: int = 0):
        self.records = records if records is not None else []
        self.beyond = beyond  # steps not stored (past MAX_RECORDS), counted in the depth

    def add(self, event: Event, at: float, repeated_order: bool = False) -> None:
        if event.visible_ms is not None and event.kind == EventKind.CUSTOM:
            self._insert([at, ENGAGED, None, _url_key(event.page_url), event.visible_ms, None, None, 0])
            return
        kind = page_type(event)
        if kind is None or (repeated_order and event.kind == EventKind.PURCHASE):
            return
        term = results = None
        if kind == "search" and event.kind == EventKind.CUSTOM:
            term, results = search_term(event.search_query), event.result_count
        self._insert([at, kind, event.product_id, _url_key(event.page_url), None, term, results,
                      1 if event.kind == EventKind.CART_ADD else 0])

    def _insert(self, record: list) -> None:
        records = self.records
        at = record[AT]
        i = len(records) if not records or records[-1][AT] <= at else bisect.bisect_right(records, at, key=_at)
        if len(records) >= MAX_RECORDS:
            if record[TYPE] != ENGAGED:
                self.beyond += 1
            return
        records.insert(i, record)

    def absorb(self, other: "Journey") -> None:
        """Merge another session's journey (the sessions became one)."""
        for record in other.records:
            self._insert(list(record))
        self.beyond += other.beyond

    def forget_purchase(self, at: float) -> None:
        """Take back the purchase step at ``at`` (an order another key of the user counted first)."""
        for n, record in enumerate(self.records):
            if record[TYPE] == "purchase" and record[AT] == at:
                del self.records[n]
                return

    def encode(self) -> list:
        return [self.records, self.beyond]

    @classmethod
    def decode(cls, data: list | None) -> "Journey":
        return cls() if data is None else cls(data[0], data[1])

    def summary(self) -> dict:
        """The session's steps as parallel lists (the ``session_journeys`` columns), in time order."""
        steps: list = []
        visible: dict[int, int] = {}  # step index -> largest visible ms reported
        last = None
        for record in self.records:
            kind, url = record[TYPE], record[URL]
            if kind == ENGAGED:
                target = _engaged_step(steps, url)
                if target is not None:
                    visible[target] = max(visible.get(target, 0), record[VISIBLE])
            elif url is not None and last is not None and url == last[URL] and kind == last[TYPE]:
                last = steps[-1] = _combined(last, record)  # the same page again (its page call and its track)
            else:
                steps.append(record)
                last = record
        times, types, products, _urls, _visible, terms, results, _added = zip(*steps) if steps else ((),) * 8
        # Each step's dwell is the gap to the next step; the last has none; a reported visible time beats both.
        # In whole milliseconds (int + 0.5: round(x, 3) costs four times as much; times are sorted, gaps >= 0).
        dwell = [min(int((after - at) * 1000 + 0.5) / 1000, DWELL_CAP_S) for at, after in zip(times, times[1:])]
        dwell += [None] * bool(steps)
        source = ["next"] * (len(steps) - 1) + [None] * bool(steps)
        for n, ms in visible.items():
            dwell[n], source[n] = min(ms / 1000, DWELL_CAP_S), "visible"
        return {"page_depth": len(steps) + self.beyond, "steps_beyond": self.beyond,
                "step_times": list(times), "page_type": list(types), "product_id": list(products), "dwell_s": dwell,
                "dwell_source": source, "search_term": list(terms), "result_count": list(results),
                "cart_add_after": _cart_add_after(steps) if "search" in types else [None] * len(steps)}


def _at(record: list) -> float:
    return record[AT]


def _engaged_step(steps: list, url: int | None) -> int | None:
    """The index of the step an engagement reports on, among the steps before it."""
    if url is None:
        return len(steps) - 1 if steps else None
    for m in range(len(steps) - 1, -1, -1):
        if steps[m][URL] == url:
            return m
    return None


def _cart_add_after(steps: list) -> list:
    """Per step: for a search, whether a cart add follows it in the session; else None."""
    flags: list = [None] * len(steps)
    adds_later = 0
    for n in range(len(steps) - 1, -1, -1):
        if steps[n][TYPE] == "search":
            flags[n] = adds_later > 0
        adds_later += steps[n][ADDED]
    return flags


def _combined(step: list, again: list) -> list:
    """One step of two records of the same page: the first's time, what either carries."""
    merged = list(step)
    for slot in (PRODUCT, TERM, RESULTS):
        if merged[slot] is None:
            merged[slot] = again[slot]
    merged[ADDED] = max(merged[ADDED], again[ADDED])
    return merged
