"""Interests, popularity and product affinity as the worker's batch write keeps them (storage/interests.py,
migrations 0016, 0019 and 0020), on the real PostgreSQL: redelivery adds nothing; interests, popularity and
order pairs are sums that any batching or order gives alike, while session pairs, hours and devices follow
the session rule in arrival order (tests/support/interest_reference.py); identity merges add interests up,
erasure removes them, hostile values are written, two writers over the same products in opposite orders do
not deadlock; and the segment fields read the interest profiles the segments runner refreshes, with a
user's categories those of their products in the catalogue."""

import math
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from spoor.events import Event, EventKind, ProductLine
from spoor.privacy.erasure import erase_user
from spoor.segments import membership
from spoor.segments.membership import SegmentStore, refresh_interest_profiles
from spoor.segments.segment_compiler import compile_segment
from spoor.segments.segment_language import SegmentSpec
from spoor.storage.identities import move_rows
from spoor.storage.interests import fold_product_deltas
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.interests import DAY_S, forward_log2, interest_batch, log2_add, log2_sum
from tests.support.interest_reference import walk
from tests.support.segments_data import profile, put_profiles

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
H, TREND_H = 30 * DAY_S, 3 * DAY_S
TOP_PRICE = Decimal("99999999999999.9999")  # the largest price an event may hold: NUMERIC(18, 4)


def ev(event_id: str, user: str, kind: EventKind = EventKind.PRODUCT_VIEW, minutes: float = 0, **fields) -> Event:
    at = NOW + timedelta(minutes=minutes)
    return Event(event_id=event_id, kind=kind, name=kind.value, user_key=user, event_time=at, received_at=at,
                 source="web", **fields)


def write(writer: StreamWriter, events: list[Event], recent: dict | None = None, **options) -> None:
    """The worker's write of one batch, then the segments runner's fold of the product rows it appended
    (migration 0031); ``recent``: the users' activity carried from the batches before."""
    writer.write_batch([], events, interests=interest_batch(events, H, TREND_H, recent=recent), **options)
    fold_product_deltas(writer.engine)


def refresh(engine, prefix: str) -> None:
    """What the segments runner's pass does for the users changed since the last one (migration 0020)."""
    with engine.connect() as conn:
        keys = sorted(conn.execute(text("SELECT DISTINCT user_key FROM user_interests WHERE user_key LIKE :p "
                                        "UNION SELECT user_key FROM user_interest_profiles WHERE user_key LIKE :p"),
                                   {"p": prefix + "%"}).scalars())
    refresh_interest_profiles(engine, keys)


def interests(conn, user: str) -> dict[tuple[str, str], float]:
    rows = conn.execute(text("SELECT facet, value, weight FROM user_interests WHERE user_key = :u"), {"u": user})
    return {(facet, value): weight for facet, value, weight in rows}


def affinity(conn, prefix: str) -> dict[tuple[str, str], tuple[float, float | None]]:
    rows = conn.execute(text("SELECT product_id, neighbour_id, weight, bought FROM product_affinity "
                             "WHERE product_id LIKE :p"), {"p": prefix + "%"})
    return {(a, b): (w, bought) for a, b, w, bought in rows}


def profiles(conn, prefix: str) -> dict[str, tuple]:
    return {row[0]: tuple(row[1:]) for row in conn.execute(text(
        "SELECT user_key, top_category, preferred_device, preferred_hour FROM user_interest_profiles "
        "WHERE user_key LIKE :p"), {"p": prefix + "%"})}


SUMS = {  # what any batching and order of the same events gives alike
    "user_interests": ("user_key, facet, value, weight, price", "user_key",
                       "facet IN ('product', 'bought')"),
    "product_popularity": ("product_id, category, price, weight, trend, bought", "product_id", "true"),
    "product_affinity": ("product_id, neighbour_id, bought", "product_id", "bought IS NOT NULL"),
}
EVERYTHING = {
    "user_interests": ("user_key, facet, value, weight, price", "user_key", "true"),
    "product_popularity": SUMS["product_popularity"],
    "product_affinity": ("product_id, neighbour_id, weight, bought", "product_id", "true"),
    "user_interest_profiles": ("user_key, top_category, preferred_device, preferred_hour, price", "user_key", "true"),
}


def snapshot(conn, prefix: str, tables: dict = EVERYTHING) -> dict:
    """The rows of ``tables`` for users and products whose keys start with ``prefix``."""
    return {table: sorted(tuple(row) for row in conn.execute(text(
        f"SELECT {columns} FROM {table} WHERE {key} LIKE :p AND {where}"), {"p": prefix + "%"}))
        for table, (columns, key, where) in tables.items()}


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12))


def same_rows(got: list[tuple], expected: list[tuple]) -> bool:
    return len(got) == len(expected) and all(
        len(mine) == len(theirs) and all(close(a, b) if isinstance(a, float) or isinstance(b, float) else a == b
                                         for a, b in zip(mine, theirs))
        for mine, theirs in zip(got, expected))


@pytest.fixture(scope="module")
def writer(engine) -> StreamWriter:
    return StreamWriter(engine)


def shoppers(tag: str) -> list[Event]:
    """Two shoppers' week: views, clicks, cart adds, orders, devices and hours, sessions over and under
    30 minutes apart."""
    u1, u2, p = f"{tag}u1", f"{tag}u2", f"{tag}p"
    return [
        ev(f"{tag}e1", u1, minutes=0, product_id=f"{p}1", category="dresses", price=Decimal("80"), device="mobile"),
        ev(f"{tag}e2", u1, minutes=5, product_id=f"{p}2", category="dresses", price=Decimal("120"), device="mobile"),
        ev(f"{tag}e3", u1, EventKind.CLICK, minutes=6, product_id=f"{p}3", category="shoes", device="mobile"),
        ev(f"{tag}e4", u1, EventKind.CART_ADD, minutes=9, product_id=f"{p}2", category="dresses", device="mobile"),
        ev(f"{tag}e5", u1, EventKind.CART_ADD, minutes=20, product_id=f"{p}3", category="shoes", device="desktop"),
        ev(f"{tag}e6", u1, EventKind.PURCHASE, minutes=25, order_id=f"{tag}o1", revenue=Decimal("200"),
           products=(ProductLine(product_id=f"{p}2", category="dresses", price=Decimal("120")),
                     ProductLine(product_id=f"{p}3", category="shoes", price=Decimal("80")))),
        ev(f"{tag}e7", u1, minutes=3 * 24 * 60, product_id=f"{p}4", category="bags", price=Decimal("30")),
        ev(f"{tag}e8", u1, minutes=3 * 24 * 60 + 29, product_id=f"{p}1", category="dresses"),
        ev(f"{tag}e9", u2, minutes=1, product_id=f"{p}1", category="dresses", device="tablet"),
        ev(f"{tag}e10", u2, minutes=40, product_id=f"{p}4", category="bags", device="tablet"),
        ev(f"{tag}e11", u2, EventKind.PAGE_VIEW, minutes=41),
        ev(f"{tag}e12", u2, EventKind.PURCHASE, minutes=2 * 24 * 60, order_id=f"{tag}o2",
           products=(ProductLine(product_id=f"{p}4", category="bags", price=Decimal("30")),
                     ProductLine(product_id=f"{p}1", category="dresses", price=Decimal("80")),
                     ProductLine(product_id=f"{p}4", category="bags", price=Decimal("30")))),
    ]


def renamed(rows: list[tuple], tag: str) -> list[tuple]:
    return [tuple(v.replace(tag, "#", 1) if isinstance(v, str) else v for v in row) for row in rows]


def expected_by_the_rule(arrived: list[Event]) -> tuple[dict, dict]:
    """The affinity weights ((product, neighbour) -> log weight: session pairs by the rule in arrival order,
    plus every two distinct products of one order at 4) and the hour and device weights
    ((user, facet, value) -> log weight, once per session start) that ``arrived`` should leave."""
    pairs, starts = walk(arrived)
    weights: dict[tuple, list[float]] = {}
    for _e, a, b, w, t in pairs:
        weights.setdefault((a, b), []).append(forward_log2(w, t, H))
    for e in arrived:
        if e.kind == EventKind.PURCHASE:
            products = list(dict.fromkeys(line.product_id for line in e.products))
            for a in products:
                for b in products:
                    if a != b:
                        weights.setdefault((a, b), []).append(forward_log2(4.0, e.event_time.timestamp(), H))
    at = {e.event_id: e.event_time.timestamp() for e in arrived}
    activity: dict[tuple, list[float]] = {}
    for event_id, user, hour, device in starts:
        activity.setdefault((user, "hour", str(hour)), []).append(forward_log2(1.0, at[event_id], H))
        if device:
            activity.setdefault((user, "device", device), []).append(forward_log2(1.0, at[event_id], H))
    return ({k: log2_sum(v) for k, v in weights.items()}, {k: log2_sum(v) for k, v in activity.items()})


def assert_the_rule(engine, prefix: str, arrived: list[Event]) -> None:
    pairs, activity = expected_by_the_rule(arrived)
    with engine.connect() as conn:
        got_pairs = {k: w for k, (w, _b) in affinity(conn, prefix).items()}
        got_activity = {(u, f, v): w for u, f, v, w in conn.execute(text(
            "SELECT user_key, facet, value, weight FROM user_interests WHERE user_key LIKE :p "
            "AND facet IN ('hour', 'device')"), {"p": prefix + "%"})}
    assert set(got_pairs) == set(pairs)
    assert all(close(got_pairs[k], w) for k, w in pairs.items()), (got_pairs, pairs)
    assert set(got_activity) == set(activity)
    assert all(close(got_activity[k], w) for k, w in activity.items()), (got_activity, activity)


def test_a_redelivered_batch_adds_nothing(engine, writer):
    events = shoppers("redo-")
    recent = {}
    write(writer, events[:7], recent)
    write(writer, events[7:], recent)
    refresh(engine, "redo-")
    with engine.connect() as conn:
        first = snapshot(conn, "redo-")
    assert all(first.values()), first
    newcomer = ev("redx-1", "redx-u", product_id="redx-p")  # one new event: the batch is written
    write(writer, [*events, newcomer])  # with no activity before it: the rows it makes differ, and count not
    write(writer, [ev("redx-2", "redx-u", minutes=1, product_id="redx-q"), *events[3:7]], recent)  # a part of it
    refresh(engine, "redo-")
    with engine.connect() as conn:
        assert snapshot(conn, "redo-") == first


ARRIVALS = {  # batches of indexes into shoppers(), in the order they arrive
    "one": [list(range(12))],
    "one-reversed": [list(range(11, -1, -1))],
    "halves-last-first": [list(range(6, 12)), list(range(6))],
    "singles-shuffled": [[i] for i in (5, 3, 0, 8, 11, 1, 6, 2, 10, 4, 9, 7)],
    "uneven": [[9, 10, 11, 0, 1], [7, 8, 2, 3], [4, 5, 6]],
}


@pytest.mark.parametrize("arrival", list(ARRIVALS))
def test_sums_ignore_order_and_batching_and_sessions_follow_arrival(engine, writer, arrival):
    tag = f"arr-{arrival}-"
    events = shoppers(tag)
    recent, arrived = {}, []
    for batch in ARRIVALS[arrival]:
        write(writer, [events[i] for i in batch], recent)
        arrived += [events[i] for i in batch]
    with engine.connect() as conn:
        got = {table: renamed(rows, tag) for table, rows in snapshot(conn, tag, SUMS).items()}
    one = shoppers("arr-reference-")
    write(writer, one)
    with engine.connect() as conn:
        expected = {table: renamed(rows, "arr-reference-") for table, rows in snapshot(conn, "arr-reference-",
                                                                                       SUMS).items()}
    for table, rows in expected.items():
        assert rows and same_rows(got[table], rows), (table, got[table], rows)
    # Session pairs, hours and devices: the rule, walked in the order the events came.
    assert_the_rule(engine, tag, arrived)


def test_the_weights_are_the_event_weights_summed(engine, writer):
    events = shoppers("sum-")
    write(writer, events)
    refresh(engine, "sum-")
    with engine.connect() as conn:
        mine = interests(conn, "sum-u1")
        theirs = interests(conn, "sum-u2")
        tops = profiles(conn, "sum-")
    t = NOW.timestamp()

    def at(minutes: float, weight: float = 1.0) -> float:
        return forward_log2(weight, t + minutes * 60, H)

    later = 3 * 24 * 60
    assert close(mine[("product", "sum-p2")], log2_sum([at(5), at(9, 3.0), at(25, 5.0)]))
    assert close(mine[("bought", "sum-p3")], at(25))
    # Once per session: 0-25 min (mobile at its start; the desktop cart add at 20 is inside it), then 3 days on.
    assert close(mine[("device", "mobile")], at(0)) and ("device", "desktop") not in mine
    assert close(mine[("hour", "12")], log2_sum([at(0), at(later)]))
    # u2: views 39 minutes apart are two sessions, the page view a minute later none, the order a third.
    assert close(theirs[("hour", "12")], log2_sum([at(1), at(40), at(2 * 24 * 60)]))
    assert close(theirs[("device", "tablet")], log2_sum([at(1), at(40)]))
    assert not any(facet == "category" for facet, _v in [*mine, *theirs])  # categories come from the catalogue
    assert ("product", "sum-p9") not in mine
    # u1's categories by their products: dresses p1 + p2, shoes p3, bags p4.
    by_category = {"dresses": log2_add(mine[("product", "sum-p1")], mine[("product", "sum-p2")]),
                   "shoes": mine[("product", "sum-p3")], "bags": mine[("product", "sum-p4")]}
    assert max(by_category, key=by_category.get) == "dresses"
    assert tops == {"sum-u1": ("dresses", "mobile", 12), "sum-u2": ("bags", "tablet", 12)}


# -- pairs of products -------------------------------------------------------------------------------

def co_views(tag: str) -> list[Event]:
    u1, u2, p = f"{tag}u1", f"{tag}u2", f"{tag}p"
    return [
        ev(f"{tag}1", u1, minutes=0, product_id=f"{p}a"),
        ev(f"{tag}2", u1, minutes=10, product_id=f"{p}b"),
        ev(f"{tag}3", u1, EventKind.CART_ADD, minutes=12, product_id=f"{p}a"),  # a again: with b, and the latest
        ev(f"{tag}4", u1, EventKind.CART_ADD, minutes=42, product_id=f"{p}c"),  # exactly 30 min after a@12
        ev(f"{tag}5", u1, EventKind.CART_ADD, minutes=50, product_id=f"{p}d"),  # a cart add: weight 2
        ev(f"{tag}6", u1, minutes=51, product_id=f"{p}e"),  # 4 products before it: b is not among the 3 latest
        ev(f"{tag}7", u1, minutes=81 + 1 / 60, product_id=f"{p}f"),  # 30 min 1 s after e: a new session, alone
        ev(f"{tag}8", u1, minutes=82, product_id=f"{p}g"),  # with f only
        ev(f"{tag}9", u1, EventKind.CLICK, minutes=83, product_id=f"{p}h"),  # clicks do not pair
        ev(f"{tag}10", u2, minutes=11, product_id=f"{p}i"),  # another user's view pairs with none of u1's
        ev(f"{tag}11", u2, minutes=100, product_id=f"{p}b"),  # nor does u2's b, 89 minutes after its i
    ]


@pytest.mark.parametrize("batches", [[range(11)], [range(3), range(3, 6), range(6, 11)], [[i] for i in range(11)],
                                     [range(10, -1, -1)], [[4, 5, 6], [0, 7, 8], [1, 2, 3], [9, 10]]],
                         ids=["one", "three", "singles", "reversed", "out-of-order"])
def test_products_viewed_in_one_session_pair_by_the_rule_in_arrival_order(engine, writer, batches):
    tag = f"co-{len(batches)}-{list(batches[0])[0]}-"
    events = co_views(tag)
    recent, arrived = {}, []
    for batch in batches:
        write(writer, [events[i] for i in batch], recent)
        arrived += [events[i] for i in batch]
    write(writer, [*events[2:5], ev(f"{tag}new", f"other-{tag}u3", product_id="other")], recent)  # redelivered: no more
    assert_the_rule(engine, tag, arrived)
    with engine.connect() as conn:
        pairs = affinity(conn, tag)
    assert all(bought is None for _w, bought in pairs.values())  # seen together, not bought together
    assert not any(a.endswith(("h", "i")) or b.endswith(("h", "i")) for a, b in pairs)
    if batches == [range(11)]:  # in time order, worked out by hand
        p, t = f"{tag}p", NOW.timestamp()
        assert set(pairs) == {(p + x, p + y) for x, y in ("ab", "ba", "ac", "ca", "bc", "cb", "ad", "da", "bd", "db",
                                                          "cd", "dc", "ae", "ea", "ce", "ec", "de", "ed",
                                                          "fg", "gf")}
        # (a@0, b@10) and (b@10, a@12): two pairs of events, one weight each at the later one's time.
        assert close(pairs[(p + "a", p + "b")][0], log2_add(forward_log2(1.0, t + 600, H),
                                                              forward_log2(2.0, t + 720, H)))
        assert close(pairs[(p + "c", p + "d")][0], forward_log2(2.0, t + 50 * 60, H))


def test_products_of_one_order_pair(engine, writer):
    t = NOW.timestamp() + 3600
    lines = tuple(ProductLine(product_id=f"ord-{x}", category="kitchen", price=Decimal("9.99")) for x in "abcab")
    write(writer, [ev("ord-1", "ord-u1", EventKind.PURCHASE, minutes=60, order_id="ord-o1", products=lines)])
    write(writer, [ev("ord-2", "ord-u2", EventKind.PURCHASE, minutes=60, order_id="ord-o2", products=lines[:2])])
    with engine.connect() as conn:
        pairs = affinity(conn, "ord-")
        bought = dict(conn.execute(text(
            "SELECT product_id, bought FROM product_popularity WHERE product_id LIKE 'ord-%'")).all())
    four = forward_log2(4.0, t, H)
    assert set(pairs) == {(a, b) for a in ("ord-a", "ord-b", "ord-c") for b in ("ord-a", "ord-b", "ord-c") if a != b}
    assert close(pairs[("ord-a", "ord-b")][0], log2_add(four, four))  # in both orders
    assert close(pairs[("ord-a", "ord-b")][1], log2_add(four, four))
    assert close(pairs[("ord-a", "ord-c")][0], four) and close(pairs[("ord-c", "ord-a")][1], four)
    one = forward_log2(1.0, t, H)
    assert close(bought["ord-a"], log2_add(one, one)) and close(bought["ord-c"], one)


# -- identities, erasure -----------------------------------------------------------------------------

def test_merging_an_anonymous_id_adds_its_interests_to_the_users(engine, writer):
    write(writer, [ev("m-1", "m-anon", minutes=0, product_id="m-p1", category="dresses", price=Decimal("300"),
                      device="mobile"),
                   ev("m-2", "m-anon", EventKind.CART_ADD, minutes=1, product_id="m-p1", category="dresses",
                      device="mobile")])
    write(writer, [ev("m-3", "m-user", minutes=-60, product_id="m-p2", category="shoes", price=Decimal("20"),
                      device="desktop"),
                   ev("m-4", "m-user", minutes=-50, product_id="m-p1", category="dresses", device="desktop")])
    refresh(engine, "m-")
    with engine.connect() as conn:
        anon, user = interests(conn, "m-anon"), interests(conn, "m-user")
        before = profiles(conn, "m-")
    assert before == {"m-anon": ("dresses", "mobile", 12), "m-user": ("dresses", "desktop", 11)}
    with engine.begin() as conn:
        moved = move_rows(conn, "m-anon", "m-user")
    assert moved["user_interests"] > 0 and moved["user_interest_profiles"] == 1
    with engine.connect() as conn:
        merged = interests(conn, "m-user")
        assert interests(conn, "m-anon") == {}
        assert profiles(conn, "m-") == {"m-user": ("dresses", "desktop", 11)}  # until the runner's next pass
    assert set(merged) == set(anon) | set(user)
    for key in merged:
        assert close(merged[key], log2_add(anon.get(key), user.get(key))), key
    refresh_interest_profiles(engine, ["m-user"])  # the merged user's profile row changed: the pass refreshes it
    with engine.connect() as conn:
        # Dresses: the anonymous view and cart add of p1 and the user's view of it; the mobile session is the
        # more recent one (each session counts its device once).
        assert profiles(conn, "m-") == {"m-user": ("dresses", "mobile", 12)}


def test_erasure_removes_the_users_interests(test_settings, engine, writer):
    for user in ("er-1", "er-2", "er-3"):
        write(writer, [ev(f"{user}-e1", user, product_id="er-p1", category="toys", price=Decimal("5"))])
    refresh(engine, "er-")
    settings = test_settings.model_copy(update={"erase_worker_wait_s": 0.1})
    report = erase_user(settings, engine, "er-1", actor="test")  # what `spoor users erase` runs
    assert report["rows_removed"]["user_interests"] == 2  # the product and the session's hour
    assert report["rows_removed"]["user_interest_profiles"] == 1
    write(writer, [], erased_users=["er-2"])  # an erasure record reaching the worker
    with engine.connect() as conn:
        left = conn.execute(text("SELECT DISTINCT user_key FROM user_interests WHERE user_key LIKE 'er-%'")).scalars()
        profiles = conn.execute(text(
            "SELECT user_key FROM user_interest_profiles WHERE user_key LIKE 'er-%'")).scalars()
        assert sorted(left) == ["er-3"] and sorted(profiles) == ["er-3"]
        assert conn.execute(text("SELECT category FROM product_popularity WHERE product_id = 'er-p1'")
                            ).scalar_one() == "toys"  # products, not users: they stay


# -- hostile values ----------------------------------------------------------------------------------

def test_the_extremes_an_event_may_hold_are_written(engine, writer):
    long_user, long_product = "h" + "u" * 255, "h" + "p" * 255
    unicode_category = ("👗'; DROP TABLE user_interests; --" * 10)[:256]
    many = tuple(ProductLine(product_id=f"h-{i:04d}" + "x" * 250, category=f"h-cat-{i % 7}", price=TOP_PRICE)
                 for i in range(1000))  # the most lines an order may have
    events = [
        ev("h-1", long_user, product_id=long_product, category=unicode_category, price=TOP_PRICE, device="d" * 128),
        ev("h-2", long_user, EventKind.CART_ADD, minutes=1, product_id=long_product, category=unicode_category,
           price=Decimal(0)),
        ev("h-3", long_user, EventKind.PURCHASE, minutes=2, order_id="o" * 256, products=many),
        Event(event_id="h-4", kind=EventKind.PRODUCT_VIEW, name="v", user_key=long_user, product_id="h-old",
              source="web",
              event_time=datetime(1970, 1, 1, tzinfo=timezone.utc), received_at=NOW),
        Event(event_id="h-5", kind=EventKind.PRODUCT_VIEW, name="v", user_key=long_user, product_id="h-late",
              source="web",
              category="\u200b\u0301" * 128,
              event_time=datetime(2099, 12, 31, 11, 59, 59, tzinfo=timezone(timedelta(hours=-12))), received_at=NOW),
    ]
    write(writer, events)
    refresh_interest_profiles(engine, [long_user])
    with engine.connect() as conn:
        mine = interests(conn, long_user)
        categories = dict(conn.execute(text("SELECT product_id, category FROM product_popularity "
                                            "WHERE product_id IN (:a, 'h-late')"), {"a": long_product}).all())
        pairs = conn.execute(text("SELECT count(*) FROM product_affinity WHERE product_id LIKE 'h-0%'")).scalar_one()
        row = conn.execute(text("SELECT top_category, preferred_device, preferred_hour, price, price_band "
                                "FROM user_interest_profile WHERE user_key = :u"), {"u": long_user}).one()
    assert len([k for k in mine if k[0] == "product"]) == 1000 + 3
    assert len([k for k in mine if k[0] == "bought"]) == 1000
    assert categories == {long_product: unicode_category, "h-late": "\u200b\u0301" * 128}
    assert all(math.isfinite(w) for w in mine.values())
    # One session from h-1 to h-3 (its device), the event of 1970 late, the one of 2099 a session of its own.
    assert {v for f, v in mine if f == "hour"} == {"12", "0", "23"} and {v for f, v in mine if f == "device"} == {
        "d" * 128}
    assert pairs == 30 * 29
    # The event in 2099 outweighs everything else, its product's category is the top one, and its hour is
    # UTC's (23:59, not 11:59).
    assert row.top_category == "\u200b\u0301" * 128 and row.preferred_hour == 23
    assert row.preferred_device == "d" * 128 and math.isfinite(row.price)


@pytest.mark.parametrize("price", ["NaN", "Infinity", "-1", "1e15", "0.00001"])
def test_prices_the_database_could_not_hold_are_refused_upstream(price):
    with pytest.raises(ValidationError):
        ev("x", "x", product_id="x", price=Decimal(price))
    with pytest.raises(ValidationError):
        ProductLine(product_id="x", price=Decimal(price))


def test_ids_past_256_characters_are_refused_upstream():
    with pytest.raises(ValidationError):
        ev("x", "u" * 257)
    with pytest.raises(ValidationError):
        ev("x", "u", product_id="p" * 257)
    with pytest.raises(ValidationError):
        ev("x", "u", category="c" * 257)


# -- two writers -------------------------------------------------------------------------------------

def test_two_writers_over_the_same_products_in_opposite_orders_do_not_deadlock(engine, writer):
    """... nor with the segments runner refreshing their users' profiles meanwhile; each writer folds the
    product rows after its write (``write``), so two folds run at once too, and count every row once."""
    products = [f"dl-p{i}" for i in range(12)]
    users = sorted(f"dl-u{side}-{n}" for side in (0, 1) for n in range(5))
    errors: list[BaseException] = []
    rounds = 150
    writing = threading.Event()

    def run(side: int) -> None:
        order = products if side == 0 else products[::-1]
        try:
            for n in range(rounds):
                user = f"dl-u{side}-{n % 5}"
                events = [ev(f"dl-{side}-{n}-{i}", user, EventKind.CART_ADD if i % 3 else EventKind.PRODUCT_VIEW,
                             minutes=n + i / 60, product_id=p, category=f"dl-c{i % 3}", price=Decimal(i + 1))
                          for i, p in enumerate(order)]
                events.append(ev(f"dl-{side}-{n}-order", user, EventKind.PURCHASE, minutes=n + 0.5,
                                 products=tuple(ProductLine(product_id=p) for p in order[:6])))
                write(writer, events)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    def refresh_meanwhile() -> None:
        try:
            while writing.is_set():
                refresh_interest_profiles(engine, users)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    writing.set()
    threads = [threading.Thread(target=run, args=(side,)) for side in (0, 1)]
    refresher = threading.Thread(target=refresh_meanwhile)
    for thread in [*threads, refresher]:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    writing.clear()
    refresher.join(timeout=60)
    assert not errors, errors[0]
    assert not any(thread.is_alive() for thread in [*threads, refresher])
    refresh_interest_profiles(engine, users)
    with engine.connect() as conn:
        events = conn.execute(text("SELECT count(*) FROM events WHERE event_id LIKE 'dl-%'")).scalar_one()
        popularity = conn.execute(text("SELECT count(*) FROM product_popularity WHERE product_id LIKE 'dl-%'")
                                  ).scalar_one()
        refreshed = conn.execute(text("SELECT count(*) FROM user_interest_profiles WHERE user_key LIKE 'dl-%'")
                                 ).scalar_one()
    assert events == 2 * rounds * 13 and popularity == 12 and refreshed == 10


# -- segment fields ----------------------------------------------------------------------------------

def members(engine, where, user_keys=None) -> set[str]:
    spec = SegmentSpec.model_validate({"name": "s", "where": where})
    compiled = compile_segment(spec, lambda name: None, NOW, user_keys)
    with engine.connect() as conn:
        return {key for key in conn.execute(compiled.query).scalars() if key.startswith("seg-")}


def test_segment_fields_read_the_interest_profile(engine, writer):
    # The catalogue's prices (with every other test's products: the hostile one's are the highest possible).
    write(writer, [ev(f"seg-cat-{i}", "seg-catalogue", product_id=f"seg-p{i}", price=Decimal(10 * i))
                   for i in range(1, 10)])
    write(writer, [
        ev("seg-1", "seg-rich", minutes=60 * 8, product_id="seg-x1", category="dresses", price=TOP_PRICE,
           device="mobile"),
        ev("seg-2", "seg-thrifty", minutes=60 * 8, product_id="seg-x2", category="dresses", price=Decimal("0.5"),
           device="desktop"),
        ev("seg-3", "seg-thrifty", EventKind.CART_ADD, minutes=60 * 9, product_id="seg-x3", category="shoes",
           device="desktop"),
        ev("seg-4", "seg-nothing", EventKind.PAGE_VIEW, minutes=60 * 9)])  # interests: only an hour
    put_profiles(engine, [profile(key, NOW) for key in ("seg-rich", "seg-thrifty", "seg-nothing", "seg-new")])
    refresh(engine, "seg-")
    with engine.connect() as conn:
        band = dict(conn.execute(text("SELECT user_key, price_band FROM user_interest_profile "
                                      "WHERE user_key LIKE 'seg-%'")).all())
    assert band["seg-rich"] == "high" and band["seg-thrifty"] == "low" and band["seg-nothing"] is None

    assert members(engine, 'top_category == "dresses"') == {"seg-rich"}
    assert members(engine, 'top_category == "shoes"') == {"seg-thrifty"}  # a cart add weighs 3 views
    assert members(engine, 'price_band == "high"') == {"seg-rich"}
    assert members(engine, {"field": "price_band", "op": "in", "value": ["low", "mid"]}) == {"seg-thrifty"}
    assert members(engine, 'preferred_device == "desktop"') == {"seg-thrifty"}
    assert members(engine, "preferred_hour == 21") == {"seg-thrifty", "seg-nothing"}  # thrifty: 2 sessions
    assert members(engine, "preferred_hour >= 20") == {"seg-rich", "seg-thrifty", "seg-nothing"}
    # A user without interests has nulls: == null matches, any comparison does not.
    assert members(engine, "top_category == null") == {"seg-nothing", "seg-new"}
    assert "seg-new" in members(engine, "preferred_hour == null") and "seg-new" in members(engine, "price_band == null")
    assert members(engine, {"not": {"field": "top_category", "op": "==", "value": "dresses"}}) >= {"seg-new"}
    # Incremental (a few users) and full agree.
    keys = ["seg-rich", "seg-new", "seg-thrifty"]
    for where in ('top_category == "dresses"', 'price_band == "low"', 'preferred_device == "mobile"'):
        assert members(engine, where, keys) == members(engine, where) & set(keys)
    # price_band moves with the catalogue: a segment using it is recomputed for everyone.
    spec = SegmentSpec.model_validate({"name": "s", "where": 'price_band == "high"'})
    assert compile_segment(spec, lambda name: None, NOW).depends_on_population
    spec = SegmentSpec.model_validate({"name": "s", "where": 'top_category == "dresses"'})
    assert not compile_segment(spec, lambda name: None, NOW).depends_on_population


def test_a_users_categories_are_those_of_their_products_in_the_catalogue(engine, writer):
    write(writer, [ev("cat-1", "cat-u1", product_id="cat-p1", category="cat-lamps"),
                   ev("cat-2", "cat-u1", minutes=1, product_id="cat-p2", category="cat-rugs"),
                   ev("cat-3", "cat-u1", minutes=2, product_id="cat-p3", category="cat-rugs"),
                   ev("cat-4", "cat-u2", EventKind.CART_ADD, minutes=3, product_id="cat-p1")])  # no category sent
    refresh(engine, "cat-")
    with engine.connect() as conn:
        # Two rug views outweigh one lamp view; u2's product is a lamp by the catalogue.
        assert {u: top for u, (top, _d, _h) in profiles(conn, "cat-").items()} == {"cat-u1": "cat-rugs",
                                                                                   "cat-u2": "cat-lamps"}
    # The catalogue says p1 is a rug now: u1's interest is the same, its categories are not.
    write(writer, [ev("cat-5", "cat-u3", minutes=4, product_id="cat-p1", category="cat-rugs")])
    write(writer, [ev("cat-6", "cat-u1", EventKind.PURCHASE, minutes=5, products=(
        ProductLine(product_id="cat-p4", category="cat-vases"),))])  # 5 for vases, against 3 for rugs
    refresh(engine, "cat-")
    with engine.connect() as conn:
        assert {u: top for u, (top, _d, _h) in profiles(conn, "cat-").items()} == {
            "cat-u1": "cat-vases", "cat-u2": "cat-rugs", "cat-u3": "cat-rugs"}
    # A user whose products have no category in the catalogue has no top category.
    write(writer, [ev("cat-7", "cat-u4", minutes=6, product_id="cat-p5")])
    refresh(engine, "cat-")
    with engine.connect() as conn:
        assert profiles(conn, "cat-")["cat-u4"] == (None, None, 12)


def test_the_incremental_pass_refreshes_the_profiles_of_changed_users(engine, writer):
    store = SegmentStore(engine)
    store.save(SegmentSpec.model_validate({"name": "inc_lamp_fans", "where": 'top_category == "inc-lamps"'}),
               status="active")
    passes = iter(range(100))

    def next_pass() -> dict:
        return membership.incremental_pass(engine, NOW, overlap_s=0, cursor=f"inc-{next(passes)}")

    def fans() -> set[str]:
        return {m["user_key"] for m in membership.members(engine, "inc_lamp_fans")}

    # The worker writes a user's interests and profile in one transaction (here: one after the other).
    write(writer, [ev("inc-1", "inc-u1", product_id="inc-p1", category="inc-lamps"),
                   ev("inc-2", "inc-u2", product_id="inc-p2", category="inc-rugs")])
    put_profiles(engine, [profile(key, NOW) for key in ("inc-u1", "inc-u2")])
    with engine.connect() as conn:
        assert profiles(conn, "inc-") == {}  # the write refreshes no profile: the runner's pass does
    assert next_pass()["segments"]["inc_lamp_fans"] == (1, 0) and fans() == {"inc-u1"}
    # New events: u2 adds a lamp to the cart (3 against a 1 for the rug), u1 two rugs.
    write(writer, [ev("inc-3", "inc-u2", EventKind.CART_ADD, minutes=1, product_id="inc-p1"),
                   ev("inc-4", "inc-u1", EventKind.CART_ADD, minutes=2, product_id="inc-p2"),
                   ev("inc-5", "inc-u1", minutes=3, product_id="inc-p2")])
    put_profiles(engine, [profile(key, NOW) for key in ("inc-u1", "inc-u2")])
    assert fans() == {"inc-u1"}
    assert next_pass()["segments"]["inc_lamp_fans"] == (1, 1) and fans() == {"inc-u2"}
    with engine.connect() as conn:
        assert {u: top for u, (top, _d, _h) in profiles(conn, "inc-").items()} == {"inc-u1": "inc-rugs",
                                                                                   "inc-u2": "inc-lamps"}
    store.set_status("inc_lamp_fans", "paused")
