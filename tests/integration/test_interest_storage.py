"""Interests, popularity and product affinity as the worker's batch write keeps them (storage/interests.py,
migrations 0016 and 0019), on the real PostgreSQL: redelivery adds nothing, batches in any order give the
weights of one batch, co-viewed products pair once per pair of events within 30 minutes of one user,
identity merges add interests up, erasure removes them, hostile values are written, two writers over the
same products in opposite orders do not deadlock, and the segment fields read the interest profile."""

import math
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from spoor.events import Event, EventKind, ProductLine
from spoor.privacy.erasure import erase_user
from spoor.segments.segment_compiler import compile_segment
from spoor.segments.segment_language import SegmentSpec
from spoor.storage.identities import move_rows
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.interests import DAY_S, forward_log2, interest_batch, log2_add, log2_sum
from tests.support.segments_data import profile, put_profiles

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
H, TREND_H = 30 * DAY_S, 3 * DAY_S
TOP_PRICE = Decimal("99999999999999.9999")  # the largest price an event may hold: NUMERIC(18, 4)


def ev(event_id: str, user: str, kind: EventKind = EventKind.PRODUCT_VIEW, minutes: float = 0, **fields) -> Event:
    at = NOW + timedelta(minutes=minutes)
    return Event(event_id=event_id, kind=kind, name=kind.value, user_key=user, event_time=at, received_at=at,
                 source="web", **fields)


def write(writer: StreamWriter, events: list[Event], **options) -> None:
    writer.write_batch([], events, interests=interest_batch(events, H, TREND_H), **options)


def interests(conn, user: str) -> dict[tuple[str, str], float]:
    rows = conn.execute(text("SELECT facet, value, weight FROM user_interests WHERE user_key = :u"), {"u": user})
    return {(facet, value): weight for facet, value, weight in rows}


def affinity(conn, prefix: str) -> dict[tuple[str, str], tuple[float, float | None]]:
    rows = conn.execute(text("SELECT product_id, neighbour_id, weight, bought FROM product_affinity "
                             "WHERE product_id LIKE :p"), {"p": prefix + "%"})
    return {(a, b): (w, bought) for a, b, w, bought in rows}


def snapshot(conn, prefix: str) -> dict:
    """Every row the interest write keeps for users and products whose keys start with ``prefix``."""
    return {table: sorted(tuple(row) for row in conn.execute(text(
        f"SELECT {columns} FROM {table} WHERE {key} LIKE :p"), {"p": prefix + "%"}))
        for table, columns, key in (
            ("user_interests", "user_key, facet, value, weight, price", "user_key"),
            ("product_popularity", "product_id, category, price, weight, trend, bought", "product_id"),
            ("product_affinity", "product_id, neighbour_id, weight, bought", "product_id"),
            ("user_interest_profiles", "user_key, top_category, preferred_device, preferred_hour, price", "user_key"))}


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12))


@pytest.fixture(scope="module")
def writer(engine) -> StreamWriter:
    return StreamWriter(engine)


def shoppers(tag: str) -> list[Event]:
    """Two shoppers' week: views, clicks, cart adds, orders, devices and hours; no more than 10 events of one
    user within 30 minutes, so the pairing's nearest-10 limit never decides."""
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


def test_a_redelivered_batch_adds_nothing(engine, writer):
    events = shoppers("redo-")
    write(writer, events)
    with engine.connect() as conn:
        first = snapshot(conn, "redo-")
    assert all(first.values()), first
    write(writer, events)
    write(writer, events[3:7])  # a part of it, in another batch
    with engine.connect() as conn:
        assert snapshot(conn, "redo-") == first


@pytest.mark.parametrize("split", [[12], [6, 6], [1] * 12, [5, 4, 3]], ids=["one", "halves", "singles", "uneven"])
def test_batches_in_any_order_give_the_weights_of_one_batch(engine, writer, split):
    tag = f"order{len(split)}{split[0]}-"
    events = shoppers(tag)
    batches, start = [], 0
    for size in split:
        batches.append(events[start:start + size])
        start += size
    for batch in reversed(batches):  # the last events first: a replay, a lagging partition
        write(writer, batch[::-1])
    with engine.connect() as conn:
        got = {table: renamed(rows, tag) for table, rows in snapshot(conn, tag).items()}
    one = shoppers("order-one-")
    write(writer, one)
    with engine.connect() as conn:
        expected = {table: renamed(rows, "order-one-") for table, rows in snapshot(conn, "order-one-").items()}
    for table, rows in expected.items():
        assert len(got[table]) == len(rows), table
        for mine, theirs in zip(got[table], rows):  # sorted by their keys, which are equal
            assert all(close(a, b) if isinstance(a, float) or isinstance(b, float) else a == b
                       for a, b in zip(mine, theirs)), (table, mine, theirs)


def test_the_weights_are_the_event_weights_summed(engine):
    with engine.connect() as conn:
        mine = interests(conn, "order-one-u1")
    t = NOW.timestamp()

    def at(minutes: float, weight: float = 1.0) -> float:
        return forward_log2(weight, t + minutes * 60, H)

    assert close(mine[("product", "order-one-p2")], log2_sum([at(5), at(9, 3.0), at(25, 5.0)]))
    assert close(mine[("category", "dresses")], log2_sum([at(0), at(5), at(9, 3.0), at(25, 5.0), at(3 * 24 * 60 + 29)]))
    assert close(mine[("bought", "order-one-p3")], at(25))
    assert close(mine[("device", "mobile")], log2_sum([at(0), at(5), at(6), at(9)]))
    assert close(mine[("hour", "12")], log2_sum([at(m) for m in (0, 5, 6, 9, 20, 25, 3 * 24 * 60, 3 * 24 * 60 + 29)]))
    assert ("product", "order-one-p9") not in mine and ("category", "bags") in mine


# -- pairs of products -------------------------------------------------------------------------------

def reference_pairs(events: list[Event]) -> dict[tuple[str, str], float]:
    """The rule, the obvious way: every two view or cart-add events of one user at most 30 minutes apart,
    of different products, give both ordered pairs their weight (2 for two cart adds, else 1) at the
    later event's time."""
    paired = [e for e in events if e.kind in (EventKind.PRODUCT_VIEW, EventKind.CART_ADD) and e.product_id]
    logs: dict[tuple[str, str], list[float]] = {}
    for i, x in enumerate(paired):
        for y in paired[i + 1:]:
            if x.user_key == y.user_key and x.product_id != y.product_id \
                    and abs(x.event_time - y.event_time) <= timedelta(minutes=30):
                weight = 2.0 if x.kind == y.kind == EventKind.CART_ADD else 1.0
                log = forward_log2(weight, max(x.event_time, y.event_time).timestamp(), H)
                logs.setdefault((x.product_id, y.product_id), []).append(log)
                logs.setdefault((y.product_id, x.product_id), []).append(log)
    return {pair: log2_sum(values) for pair, values in logs.items()}


def co_views(tag: str) -> list[Event]:
    u1, u2, p = f"{tag}u1", f"{tag}u2", f"{tag}p"
    return [
        ev(f"{tag}1", u1, minutes=0, product_id=f"{p}a"),
        ev(f"{tag}2", u1, minutes=10, product_id=f"{p}b"),
        ev(f"{tag}3", u1, EventKind.CART_ADD, minutes=12, product_id=f"{p}a"),  # a again: a pair of its own with b
        ev(f"{tag}4", u1, EventKind.CART_ADD, minutes=42, product_id=f"{p}c"),  # exactly 30 min after a@12
        ev(f"{tag}5", u1, EventKind.CART_ADD, minutes=50, product_id=f"{p}d"),  # two cart adds: weight 2
        ev(f"{tag}6", u1, minutes=80 + 1 / 60, product_id=f"{p}e"),  # 30 min 1 s after d: alone
        ev(f"{tag}7", u1, EventKind.CLICK, minutes=51, product_id=f"{p}f"),  # clicks do not pair
        ev(f"{tag}8", u2, minutes=11, product_id=f"{p}g"),  # another user's view pairs with none of u1's
        ev(f"{tag}9", u2, minutes=100, product_id=f"{p}b"),  # nor does u2's b, 90 minutes after its g
    ]


@pytest.mark.parametrize("batches", [[range(9)], [range(8, -1, -1)], [[i] for i in (5, 3, 0, 8, 1, 6, 2, 4, 7)],
                                     [[4, 5, 6], [0, 7, 8], [1, 2, 3]]],
                         ids=["one", "one-reversed", "singles-out-of-order", "three-out-of-order"])
def test_products_viewed_within_30_minutes_pair_once_per_pair_of_events(engine, writer, batches):
    tag = f"co{len(batches)}{len(batches[0])}-"
    events = co_views(tag)
    for batch in batches:
        write(writer, [events[i] for i in batch])
    write(writer, events[2:5])  # redelivered: nothing more
    with engine.connect() as conn:
        pairs = affinity(conn, tag)
    expected = reference_pairs(events)
    p = f"{tag}p"
    assert set(pairs) == set(expected) == {(p + x, p + y) for x, y in ("ab", "ba", "ac", "ca", "cd", "dc")}
    for pair, log in expected.items():
        assert close(pairs[pair][0], log), pair
        assert pairs[pair][1] is None  # seen together, not bought together
    t = NOW.timestamp()
    # (a@0, b@10) and (b@10, a@12): two pairs of events, one weight each at the later one's time.
    assert close(pairs[(p + "a", p + "b")][0], log2_add(forward_log2(1.0, t + 600, H), forward_log2(1.0, t + 720, H)))
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
    with engine.connect() as conn:
        anon, user = interests(conn, "m-anon"), interests(conn, "m-user")
        before = dict(conn.execute(text("SELECT user_key, preferred_device FROM user_interest_profiles "
                                        "WHERE user_key LIKE 'm-%'")).all())
    assert before == {"m-anon": "mobile", "m-user": "desktop"}
    with engine.begin() as conn:
        moved = move_rows(conn, "m-anon", "m-user")
    assert moved["user_interests"] > 0
    with engine.connect() as conn:
        merged = interests(conn, "m-user")
        assert interests(conn, "m-anon") == {}
        profiles = dict(conn.execute(text("SELECT user_key, top_category FROM user_interest_profiles "
                                          "WHERE user_key LIKE 'm-%'")).all())
        device = conn.execute(text("SELECT preferred_device FROM user_interest_profiles WHERE user_key = 'm-user'")
                              ).scalar_one()
    assert set(merged) == set(anon) | set(user)
    for key in merged:
        assert close(merged[key], log2_add(anon.get(key), user.get(key))), key
    assert profiles == {"m-user": "dresses"}  # the anonymous id's profile went with its interests
    assert device == "mobile"  # two recent mobile events outweigh two desktop ones an hour older


def test_erasure_removes_the_users_interests(test_settings, engine, writer):
    for user in ("er-1", "er-2", "er-3"):
        write(writer, [ev(f"{user}-e1", user, product_id="er-p1", category="toys", price=Decimal("5"))])
    settings = test_settings.model_copy(update={"erase_worker_wait_s": 0.1})
    report = erase_user(settings, engine, "er-1", actor="test")  # what `spoor users erase` runs
    assert report["rows_removed"]["user_interests"] == 3 and report["rows_removed"]["user_interest_profiles"] == 1
    write(writer, [], erased_users=["er-2"])  # an erasure record reaching the worker
    with engine.connect() as conn:
        left = conn.execute(text("SELECT DISTINCT user_key FROM user_interests WHERE user_key LIKE 'er-%'")).scalars()
        profiles = conn.execute(text(
            "SELECT user_key FROM user_interest_profiles WHERE user_key LIKE 'er-%'")).scalars()
        assert sorted(left) == ["er-3"] and sorted(profiles) == ["er-3"]


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
    with engine.connect() as conn:
        mine = interests(conn, long_user)
        pairs = conn.execute(text("SELECT count(*) FROM product_affinity WHERE product_id LIKE 'h-0%'")).scalar_one()
        row = conn.execute(text("SELECT top_category, preferred_device, preferred_hour, price, price_band "
                                "FROM user_interest_profile WHERE user_key = :u"), {"u": long_user}).one()
    assert len([k for k in mine if k[0] == "product"]) == 1000 + 3
    assert len([k for k in mine if k[0] == "bought"]) == 1000
    assert ("category", unicode_category) in mine and all(math.isfinite(w) for w in mine.values())
    assert pairs == 30 * 29
    # The event in 2099 outweighs everything else, and its hour is UTC's (23:59, not 11:59).
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
    products = [f"dl-p{i}" for i in range(12)]
    errors: list[BaseException] = []
    rounds = 150

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

    threads = [threading.Thread(target=run, args=(side,)) for side in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[0]
    assert not any(thread.is_alive() for thread in threads)
    with engine.connect() as conn:
        events = conn.execute(text("SELECT count(*) FROM events WHERE event_id LIKE 'dl-%'")).scalar_one()
        popularity = conn.execute(text("SELECT count(*) FROM product_popularity WHERE product_id LIKE 'dl-%'")
                                  ).scalar_one()
        profiles = conn.execute(text("SELECT count(*) FROM user_interest_profiles WHERE user_key LIKE 'dl-%'")
                                ).scalar_one()
    assert events == 2 * rounds * 13 and popularity == 12 and profiles == 10


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
    with engine.connect() as conn:
        band = dict(conn.execute(text("SELECT user_key, price_band FROM user_interest_profile "
                                      "WHERE user_key LIKE 'seg-%'")).all())
    assert band["seg-rich"] == "high" and band["seg-thrifty"] == "low" and band["seg-nothing"] is None

    assert members(engine, 'top_category == "dresses"') == {"seg-rich"}
    assert members(engine, 'top_category == "shoes"') == {"seg-thrifty"}  # a cart add weighs 3 views
    assert members(engine, 'price_band == "high"') == {"seg-rich"}
    assert members(engine, {"field": "price_band", "op": "in", "value": ["low", "mid"]}) == {"seg-thrifty"}
    assert members(engine, 'preferred_device == "desktop"') == {"seg-thrifty"}
    assert members(engine, "preferred_hour == 21") == {"seg-thrifty", "seg-nothing"}
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
