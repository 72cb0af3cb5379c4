"""The interest math of stream_processors/interests.py, without a database: forward-decayed logarithms
sum to the decayed weights exactly, in any order and grouping; extreme differences neither raise nor
poison a sum; each kind of event gives the rows docs/recommendations.md says it does; and session pairs,
hours and devices follow the session rule in arrival order (tests/support/interest_reference.py, the rule
worked out the obvious way), however the events are cut into batches."""

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoor.events import Event, EventKind, ProductLine
from spoor.stream_processors.interests import (
    ACTIVITY_FACETS,
    BOUGHT_TOGETHER_WEIGHT,
    DAY_S,
    FLOOR_EXPONENT,
    MAX_ORDER_LINES,
    PRODUCT_WEIGHTS,
    RECENT_PRODUCTS,
    SESSION_GAP_S,
    SESSION_PAIR_WEIGHTS,
    RecentActivity,
    decayed,
    forward_log2,
    interest_batch,
    interest_rows,
    log2_add,
    log2_sum,
    order_pairs,
    popularity_rows,
    recent_activity,
    session_pairs,
)
from spoor.stream_processors.profile import UserProfile
from tests.support.interest_reference import walk

H = 30 * DAY_S
TREND_H = 3 * DAY_S
T0 = datetime(2026, 6, 1, 9, 30, tzinfo=timezone.utc)


def event(kind: EventKind, event_id: str = "e1", at: datetime = T0, **fields) -> Event:
    return Event(event_id=event_id, kind=kind, name=kind.value, user_key="u1", event_time=at, received_at=at,
                 **fields)


def direct_sum(weighted: list[tuple[float, float]], now_s: float, half_life_s: float) -> float:
    """Σ w · 2^-((now - t) / H): what the logarithms stand for, computed the obvious way."""
    return sum(w * 2.0 ** (-(now_s - t) / half_life_s) for w, t in weighted)


# -- the logarithms ----------------------------------------------------------------------------------

@pytest.mark.parametrize("half_life_s", [H, TREND_H, 3600.0])
def test_a_sum_of_logarithms_is_the_decayed_sum_at_any_later_time(half_life_s):
    start = T0.timestamp()
    weighted = [(1.0, start), (0.5, start + 60), (3.0, start + 7 * DAY_S), (5.0, start + 7 * DAY_S),
                (1.0, start + 31 * DAY_S), (4.0, start + 45.5 * DAY_S)]
    total = log2_sum(forward_log2(w, t, half_life_s) for w, t in weighted)
    last = max(t for _w, t in weighted)
    for now_s in (last, last + 1, last + half_life_s, last + 10 * half_life_s, last + 365 * DAY_S):
        expected = direct_sum(weighted, now_s, half_life_s)
        if expected < 2.0 ** FLOOR_EXPONENT:
            continue  # below the floor every weight reads as 2^-1000 (tested below)
        assert decayed(total, now_s, half_life_s) == pytest.approx(expected, rel=1e-9)


def test_one_event_halves_every_half_life():
    log_weight = forward_log2(3.0, T0.timestamp(), H)
    assert decayed(log_weight, T0.timestamp(), H) == pytest.approx(3.0, rel=1e-12)
    assert decayed(log_weight, T0.timestamp() + H, H) == pytest.approx(1.5, rel=1e-12)
    assert decayed(log_weight, T0.timestamp() + 2 * H, H) == pytest.approx(0.75, rel=1e-12)


def test_ranking_by_the_logarithm_is_ranking_by_the_weight_now():
    """An older but heavier interest loses to a newer light one exactly when its decayed weight does."""
    old = forward_log2(5.0, T0.timestamp(), H)  # a purchase
    for days_later, newer_wins in ((1, False), (60, False), (80, True)):  # 5 · 2^-(d/30) vs 1: d > 69.66
        new = forward_log2(1.0, T0.timestamp() + days_later * DAY_S, H)  # a view
        assert (new > old) is newer_wins
        now = T0.timestamp() + 100 * DAY_S
        assert (decayed(new, now, H) > decayed(old, now, H)) is newer_wins


# Logarithms as stored: events from 1970 to 2100 with half-lives from an hour to ten years.
logs = st.floats(min_value=-10.0, max_value=1_100_000.0, allow_nan=False, allow_infinity=False)
logs_or_zero = st.one_of(st.none(), logs)


@given(logs_or_zero, logs_or_zero)
def test_log2_add_is_commutative(a, b):
    assert log2_add(a, b) == log2_add(b, a)


@given(logs_or_zero, logs_or_zero, logs_or_zero)
def test_log2_add_is_associative(a, b, c):
    left, right = log2_add(log2_add(a, b), c), log2_add(a, log2_add(b, c))
    if left is None:
        assert right is None
    else:
        assert right == pytest.approx(left, rel=1e-14, abs=1e-9)


@given(st.lists(logs_or_zero, max_size=30), st.randoms(use_true_random=False))
def test_log2_sum_ignores_order_and_batching(values, rnd):
    whole = log2_sum(values)
    shuffled = values[:]
    rnd.shuffle(shuffled)
    cut = rnd.randint(0, len(shuffled))
    in_two_batches = log2_add(log2_sum(shuffled[:cut]), log2_sum(shuffled[cut:]))
    if whole is None:
        assert in_two_batches is None and all(v is None for v in values)
    else:
        assert in_two_batches == pytest.approx(whole, rel=1e-14, abs=1e-9)
        assert whole >= max(v for v in values if v is not None)  # adding never lowers a weight


def test_none_is_a_weight_of_zero():
    assert log2_add(None, None) is None
    assert log2_add(None, 7.5) == 7.5 and log2_add(7.5, None) == 7.5
    assert log2_sum([]) is None and log2_sum([None, None]) is None
    assert log2_add(3.0, 3.0) == pytest.approx(4.0)  # 2^3 + 2^3 = 2^4


@pytest.mark.parametrize("gap", [1000.0, 1075.0, 5000.0, 1e6, 1e300])
def test_a_negligible_weight_neither_raises_nor_changes_a_sum(gap):
    """2^-gap underflows a float; the floor keeps the arithmetic finite and the sum the larger weight."""
    big = 1_000.0
    assert log2_add(big, big - gap) == big
    assert log2_add(big - gap, big) == big
    assert log2_sum([big - gap] * 1000 + [big]) == big
    assert decayed(-gap, 0.0, H) == 2.0 ** FLOOR_EXPONENT  # read back: the floor, a finite float


def test_extreme_times_stay_finite():
    earliest, latest = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)
    for half_life_s in (3600.0, 0.05 * DAY_S, 3650 * DAY_S):
        low = forward_log2(0.5, earliest.timestamp(), half_life_s)
        high = forward_log2(5.0, latest.timestamp(), half_life_s)
        total = log2_add(low, high)
        assert math.isfinite(low) and math.isfinite(high) and math.isfinite(total) and total >= high
        if half_life_s <= DAY_S:
            assert total == high  # 130 years apart at a short half-life: nothing left of the old


# -- rows per event ------------------------------------------------------------------------------------

def facets(rows: list[tuple]) -> dict[tuple[str, str], tuple[float, str | None]]:
    assert all(r[0] == "e1" and r[1] == "u1" for r in rows)
    pairs = [((facet, value), (weight, price)) for _e, _u, facet, value, weight, price in rows]
    assert len(dict(pairs)) == len(pairs), "one row per facet value and event"
    return dict(pairs)


@pytest.mark.parametrize("kind", [EventKind.PRODUCT_VIEW, EventKind.CLICK, EventKind.CART_ADD])
def test_a_product_event_counts_its_product_and_a_session_start_its_device_and_hour(kind):
    e = event(kind, product_id="p1", category="dresses", price=Decimal("49.90"), device="mobile")
    at = T0.timestamp()
    weight = forward_log2(PRODUCT_WEIGHTS[kind], at, H)
    assert facets(interest_rows(e, H)) == {("hour", "9"): (forward_log2(1.0, at, H), None),
                                           ("device", "mobile"): (forward_log2(1.0, at, H), None),
                                           ("product", "p1"): (weight, "49.90")}  # no category row
    assert facets(interest_rows(e, H, session_start=False)) == {("product", "p1"): (weight, "49.90")}
    # The category goes with the product's popularity: the catalogue a user's categories are read from.
    assert popularity_rows(e, H, TREND_H) == [("e1", "p1", "dresses", "49.90", weight,
                                               forward_log2(PRODUCT_WEIGHTS[kind], at, TREND_H), None)]
    assert order_pairs(e, H) == []


def test_the_weights_of_kinds():
    assert {k.value: w for k, w in PRODUCT_WEIGHTS.items()} == {"product_view": 1.0, "click": 0.5, "cart_add": 3.0,
                                                                "purchase": 5.0}
    assert {k.value: w for k, w in SESSION_PAIR_WEIGHTS.items()} == {"product_view": 1.0, "cart_add": 2.0}
    assert (SESSION_GAP_S, RECENT_PRODUCTS) == (1800.0, 3)


def test_an_order_counts_each_product_once_and_what_was_bought():
    lines = (ProductLine(product_id="a", category="shoes", price=Decimal("10")),
             ProductLine(product_id="b", category="shoes", price=Decimal("20.5")),
             ProductLine(product_id="a", category="shoes", price=Decimal("10"), quantity=3),  # a again
             ProductLine(product_id="c"),
             ProductLine(category="bags"))  # a line without a product counts for nothing
    e = event(EventKind.PURCHASE, products=lines, revenue=Decimal("60.5"))
    at = T0.timestamp()
    five, one = forward_log2(5.0, at, H), forward_log2(1.0, at, H)
    assert facets(interest_rows(e, H)) == {
        ("hour", "9"): (one, None),
        ("product", "a"): (five, "10"), ("product", "b"): (five, "20.5"), ("product", "c"): (five, None),
        ("bought", "a"): (one, "10"), ("bought", "b"): (one, "20.5"), ("bought", "c"): (one, None)}
    popularity = popularity_rows(e, H, TREND_H)
    assert [(r[1], r[2], r[3], r[6]) for r in popularity] == [("a", "shoes", "10", one), ("b", "shoes", "20.5", one),
                                                              ("c", None, None, one)]
    pairs = order_pairs(e, H)
    assert sorted((a, b) for _e, a, b, _w in pairs) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"),
                                                        ("c", "a"), ("c", "b")]
    assert {w for *_rest, w in pairs} == {forward_log2(BOUGHT_TOGETHER_WEIGHT, at, H)}


def test_a_purchase_without_lines_counts_its_own_product_or_only_the_visit():
    with_product = event(EventKind.PURCHASE, product_id="p9", category="hats", price=Decimal("5"))
    assert set(facets(interest_rows(with_product, H))) == {("hour", "9"), ("product", "p9"), ("bought", "p9")}
    assert len(popularity_rows(with_product, H, TREND_H)) == 1 and order_pairs(with_product, H) == []
    bare = event(EventKind.PURCHASE, order_id="o1", revenue=Decimal("12"))
    assert set(facets(interest_rows(bare, H))) == {("hour", "9")}
    assert set(facets(interest_rows(bare, H, session_start=False))) == set()
    assert popularity_rows(bare, H, TREND_H) == [] and order_pairs(bare, H) == []


@pytest.mark.parametrize("e", [
    event(EventKind.PAGE_VIEW, page_url="https://shop.example/"),
    event(EventKind.PRODUCT_VIEW, category="dresses"),  # no product: nothing to be interested in
    event(EventKind.CART_REMOVE, product_id="p1", category="dresses"),
    event(EventKind.CHECKOUT, product_id="p1"),
    event(EventKind.REFUND, order_id="o1", revenue=Decimal("3")),
    event(EventKind.CUSTOM, product_id="p1"),
], ids=lambda e: e.kind.value)
def test_events_without_a_weighted_product_count_only_the_visit(e):
    assert set(facets(interest_rows(e, H))) == {("hour", "9")}
    assert popularity_rows(e, H, TREND_H) == [] and order_pairs(e, H) == []
    assert session_pairs(e, RecentActivity(T0.timestamp(), ["p0", "p2"]), H) == []


def test_no_category_is_ever_an_interest_row():
    for category in ("", "dresses"):
        e = event(EventKind.PRODUCT_VIEW, product_id="p1", category=category)
        assert set(facets(interest_rows(e, H))) == {("hour", "9"), ("product", "p1")}


def test_the_hour_is_the_hour_in_utc():
    """A backend service may send an offset; the hour facet is UTC's (docs/recommendations.md)."""
    paris = timezone(timedelta(hours=2))
    e = event(EventKind.PAGE_VIEW, at=datetime(2026, 6, 1, 23, 30, tzinfo=paris))
    assert set(facets(interest_rows(e, H))) == {("hour", "21")}


@pytest.mark.parametrize("distinct, expected", [(0, 0), (1, 0), (2, 2), (5, 20), (30, 870), (31, 870), (995, 870)])
def test_order_pairs_are_n_times_n_minus_one_up_to_30_products(distinct, expected):
    lines = tuple(ProductLine(product_id=f"p{i}") for i in range(distinct))
    pairs = order_pairs(event(EventKind.PURCHASE, products=lines + lines[:5]), H)  # repeated lines change nothing
    assert len(pairs) == expected == min(distinct, MAX_ORDER_LINES) * (min(distinct, MAX_ORDER_LINES) - 1)
    assert len({(a, b) for _e, a, b, _w in pairs}) == expected  # each ordered pair once, never (p, p)
    assert all(a != b for _e, a, b, _w in pairs)
    assert {a for _e, a, _b, _w in pairs} <= {f"p{i}" for i in range(MAX_ORDER_LINES)}  # the first 30 lines


def test_a_batch_is_the_rows_of_its_events():
    events = [event(EventKind.PRODUCT_VIEW, "e1", product_id="a", category="c", device="web"),
              event(EventKind.PURCHASE, "e2", at=T0 + timedelta(minutes=3),
                    products=(ProductLine(product_id="a"), ProductLine(product_id="b")))]
    batch = interest_batch(events, H, TREND_H)
    assert batch["half_life_s"] == H
    # e1: hour, device, product; e2 (same session): two products, two bought.
    assert len(batch["interests"]) == 3 + 4 and len(batch["popularity"]) == 3 and len(batch["pairs"]) == 2
    assert {r[0] for r in batch["interests"]} == {"e1", "e2"}
    assert batch["seen_pairs"] == []  # a purchase does not pair as a view


# -- sessions: pairs, hour and device ------------------------------------------------------------------

def view(event_id: str, minutes: float, product: str | None = None, user: str = "u1",
         kind: EventKind = EventKind.PRODUCT_VIEW, device: str | None = None) -> Event:
    at = T0 + timedelta(minutes=minutes)
    return Event(event_id=event_id, kind=kind, name=kind.value, user_key=user, event_time=at, received_at=at,
                 product_id=product, device=device)


def pairs_of(events: list[Event], batches: list[int] | None = None) -> set[tuple[str, str, str]]:
    """(event id, product, neighbour) of the session pairs, the events cut into ``batches`` (sizes) with
    each user's recent activity carried from one to the next, as the worker's profile carries it."""
    recent, rows, start = {}, [], 0
    for size in batches or [len(events)]:
        rows += interest_batch(events[start:start + size], H, TREND_H, recent=recent)["seen_pairs"]
        start += size
    assert start == len(events)
    return {(e, a, b) for e, a, b, _w in rows}


def both(event_id: str, product: str, *others: str) -> set[tuple[str, str, str]]:
    return {(event_id, product, o) for o in others} | {(event_id, o, product) for o in others}


def test_a_view_pairs_with_the_products_before_it_in_the_session_both_ways_at_its_time():
    events = [view("v1", 0, "a"), view("v2", 10, "b"), view("v3", 12, "a", kind=EventKind.CART_ADD)]
    rows = interest_batch(events, H, TREND_H)["seen_pairs"]
    t = T0.timestamp()
    assert sorted(rows) == sorted([("v2", "b", "a", forward_log2(1.0, t + 600, H)),
                                   ("v2", "a", "b", forward_log2(1.0, t + 600, H)),
                                   ("v3", "a", "b", forward_log2(2.0, t + 720, H)),  # a cart add weighs 2
                                   ("v3", "b", "a", forward_log2(2.0, t + 720, H))])


def test_a_gap_over_30_minutes_ends_the_session_and_its_products():
    events = [view("v1", 0, "a"), view("v2", 30, "b"),  # 30:00 after a: the same session
              view("v3", 60 + 1 / 60, "c"),  # 30:01 after b: a new session, paired with nothing
              view("v4", 61, "d"),  # with c only: a and b were in the session before the gap
              view("v5", 62, None, kind=EventKind.PAGE_VIEW), view("v6", 91, "e"),  # a page view keeps it going
              view("v7", 200, "f", kind=EventKind.CART_ADD)]
    assert pairs_of(events) == both("v2", "b", "a") | both("v4", "d", "c") | both("v6", "e", "c", "d")


def test_at_most_the_3_latest_distinct_products_and_a_repeat_moves_to_the_latest():
    events = [view(f"v{i}", i, p) for i, p in enumerate("abca")]  # a again: with b and c, then the latest
    events += [view("v4", 4, "d"),  # with b, c, a (the latest 3: c, a, d after it)
               view("v5", 5, "e"),  # with c, a, d; not b, the 4th latest
               view("v6", 6, "e"),  # e again: with a, d (its own product skipped), the latest 3 being a, d, e
               view("v7", 7, "b", kind=EventKind.CLICK), view("v8", 8, None, kind=EventKind.CART_ADD)]  # not paired
    assert pairs_of(events) == (both("v1", "b", "a") | both("v2", "c", "a", "b") | both("v3", "a", "b", "c")
                                | both("v4", "d", "b", "c", "a") | both("v5", "e", "c", "a", "d")
                                | both("v6", "e", "a", "d"))


def test_users_never_pair_with_each_other():
    events = [view("v1", 0, "a", "u1"), view("v2", 1, "b", "u2"), view("v3", 2, "c", "u1"), view("v4", 3, "d", "u2"),
              view("v5", 4, "a", "u3")]
    assert pairs_of(events) == both("v3", "c", "a") | both("v4", "d", "b")


def test_a_late_event_pairs_with_what_was_recent_when_it_came():
    events = [view("v1", 100, "a"), view("v2", 110, "b"),
              view("v3", 90, "c"),  # 20 minutes before b but after it: with a and b; then the latest
              view("v4", 40, "d"),  # over 30 minutes before the latest event: no session, no pairs, not recent
              view("v5", 120, "e")]  # with a, b, c
    assert pairs_of(events) == both("v2", "b", "a") | both("v3", "c", "a", "b") | both("v5", "e", "a", "b", "c")
    # Arriving newest first: c (30:00 before e) still pairs; d does not; b and a pair with all before them.
    assert pairs_of(events[::-1]) == both("v3", "c", "e") | both("v2", "b", "e", "c") | both("v1", "a", "e", "c", "b")


def test_the_hour_and_device_count_once_per_session():
    events = [view("v1", 0, "a", device="mobile"), view("v2", 5, "b", device="desktop"),
              view("v3", 29, None, kind=EventKind.PAGE_VIEW, device="mobile"),
              view("v4", 80, "c", device="desktop"),  # a new session at 10:50
              view("v5", 81, "c", user="u2")]  # another user's first event
    rows = interest_batch(events, H, TREND_H)["interests"]
    t = T0.timestamp()
    assert sorted((e, u, f, v, w) for e, u, f, v, w, _p in rows if f in ACTIVITY_FACETS) == [
        ("v1", "u1", "device", "mobile", forward_log2(1.0, t, H)), ("v1", "u1", "hour", "9", forward_log2(1.0, t, H)),
        ("v4", "u1", "device", "desktop", forward_log2(1.0, t + 80 * 60, H)),
        ("v4", "u1", "hour", "10", forward_log2(1.0, t + 80 * 60, H)),
        ("v5", "u2", "hour", "10", forward_log2(1.0, t + 81 * 60, H))]


def test_the_recent_activity_carried_between_batches_is_the_batch_as_one():
    events = [view("v1", 0, "a", device="web"), view("v2", 1, "b"), view("v3", 2, "c"), view("v4", 3, "d")]
    whole = interest_batch(events, H, TREND_H)
    recent = {}
    first = interest_batch(events[:2], H, TREND_H, recent=recent)
    assert recent["u1"] == RecentActivity(T0.timestamp() + 60, ["a", "b"])
    second = interest_batch(events[2:], H, TREND_H, recent=recent)
    assert recent["u1"] == RecentActivity(T0.timestamp() + 180, ["b", "c", "d"])
    for rows in ("interests", "popularity", "pairs", "seen_pairs"):
        assert first[rows] + second[rows] == whole[rows], rows
    # Without it, the second batch starts a session of its own: it counts its hour and pairs only d with c.
    alone = interest_batch(events[2:], H, TREND_H)
    assert {r[2] for r in alone["interests"] if r[0] == "v3"} == {"product", "hour"}
    assert {(e, a, b) for e, a, b, _w in alone["seen_pairs"]} == both("v4", "d", "c")


def test_the_worker_takes_the_recent_activity_from_the_profile():
    profile = UserProfile("u1")
    for i, p in enumerate(["a", "b", "c", "d", "b", "x" * 200]):  # a long id is kept as a digest
        profile.apply(view(f"v{i}", i, p), dedupe_window=100)
    profile.apply(view("v9", 9, "e", kind=EventKind.CART_ADD), dedupe_window=100)
    recent = recent_activity(profile)
    # The profile's viewed products, in the order first viewed, digests left out: b's second view and the
    # cart add are not among them (docs/recommendations.md: limits of the pairing).
    assert recent == RecentActivity(T0.timestamp() + 9 * 60, ["c", "d"])
    assert recent_activity(UserProfile("u2")) == RecentActivity(None, [])


events_in_any_order = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3"]),
              st.sampled_from([EventKind.PRODUCT_VIEW, EventKind.PRODUCT_VIEW, EventKind.CART_ADD, EventKind.CLICK,
                               EventKind.PAGE_VIEW, EventKind.PURCHASE]),
              st.sampled_from(["a", "b", "c", "d", "e", None]),
              st.integers(min_value=0, max_value=240),  # minutes: gaps over and under 30, any arrival order
              st.sampled_from(["mobile", "desktop", None])),
    max_size=40)


@given(events_in_any_order, st.lists(st.integers(min_value=1, max_value=8), max_size=40))
def test_pairs_and_session_starts_are_the_rule_in_arrival_order_in_any_batches(drawn, sizes):
    events = [view(f"v{i}", minutes, product, user, kind, device)
              for i, (user, kind, product, minutes, device) in enumerate(drawn)]
    batches, left = [], len(events)
    for size in sizes:
        if left:
            batches.append(min(size, left))
            left -= batches[-1]
    if left:
        batches.append(left)
    recent, seen, interests = {}, [], []
    start = 0
    for size in batches:
        batch = interest_batch(events[start:start + size], H, TREND_H, recent=recent)
        seen += batch["seen_pairs"]
        interests += batch["interests"]
        start += size
    expected_pairs, starts = walk(events)
    assert sorted(seen) == sorted((e, a, b, forward_log2(w, t, H)) for e, a, b, w, t in expected_pairs)
    activity = sorted((e, u, f, v) for e, u, f, v, _w, _p in interests if f in ACTIVITY_FACETS)
    assert activity == sorted([(e, u, "hour", str(hour)) for e, u, hour, _d in starts]
                              + [(e, u, "device", d) for e, u, _h, d in starts if d])


# -- segment fields ----------------------------------------------------------------------------------

def test_the_interest_profile_is_a_source_of_segment_fields():
    from sqlalchemy.dialects import postgresql

    from spoor.segments.segment_compiler import compile_segment
    from spoor.segments.segment_fields import FIELDS, FieldType
    from spoor.segments.segment_language import SegmentSpec

    assert {name: (spec.type, spec.source) for name, spec in FIELDS.items() if spec.source == "interests"} == {
        "top_category": (FieldType.STRING, "interests"), "price_band": (FieldType.STRING, "interests"),
        "preferred_device": (FieldType.STRING, "interests"), "preferred_hour": (FieldType.NUMBER, "interests")}
    assert FIELDS["price_band"].depends_on_population and not FIELDS["top_category"].depends_on_population

    def compiled(where):
        spec = SegmentSpec.model_validate({"name": "s", "where": where})
        result = compile_segment(spec, lambda name: None, T0)
        return result, str(result.query.compile(dialect=postgresql.dialect()))

    by_category, sql = compiled('top_category == "dresses"')
    assert "LEFT OUTER JOIN user_interest_profiles" in sql and "product_price_terciles" not in sql
    assert not by_category.depends_on_population and not by_category.depends_on_time
    by_band, sql = compiled({"all": ['price_band == "high"', "preferred_hour >= 18"]})
    assert "spoor_price_band(user_interest_profiles.price, product_price_terciles.low_below" in sql
    assert by_band.depends_on_population
