"""The interest math of stream_processors/interests.py, without a database: forward-decayed logarithms
sum to the decayed weights exactly, in any order and grouping; extreme differences neither raise nor
poison a sum; and each kind of event gives the rows docs/recommendations.md says it does."""

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoor.events import Event, EventKind, ProductLine
from spoor.stream_processors.interests import (
    BOUGHT_TOGETHER_WEIGHT,
    DAY_S,
    FLOOR_EXPONENT,
    MAX_ORDER_LINES,
    PRODUCT_WEIGHTS,
    decayed,
    forward_log2,
    interest_batch,
    interest_rows,
    log2_add,
    log2_sum,
    order_pairs,
    popularity_rows,
)

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
def test_a_product_event_counts_its_product_category_device_and_hour(kind):
    e = event(kind, product_id="p1", category="dresses", price=Decimal("49.90"), device="mobile")
    rows = facets(interest_rows(e, H))
    at = T0.timestamp()
    weight = forward_log2(PRODUCT_WEIGHTS[kind], at, H)
    assert rows == {("hour", "9"): (forward_log2(1.0, at, H), None),
                    ("device", "mobile"): (forward_log2(1.0, at, H), None),
                    ("product", "p1"): (weight, "49.90"),
                    ("category", "dresses"): (weight, None)}
    assert popularity_rows(e, H, TREND_H) == [("e1", "p1", "dresses", "49.90", weight,
                                               forward_log2(PRODUCT_WEIGHTS[kind], at, TREND_H), None)]
    assert order_pairs(e, H) == []


def test_the_weights_of_kinds():
    assert {k.value: w for k, w in PRODUCT_WEIGHTS.items()} == {"product_view": 1.0, "click": 0.5, "cart_add": 3.0,
                                                                "purchase": 5.0}


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
        ("bought", "a"): (one, "10"), ("bought", "b"): (one, "20.5"), ("bought", "c"): (one, None),
        ("category", "shoes"): (five, None)}
    popularity = popularity_rows(e, H, TREND_H)
    assert [(r[1], r[2], r[3], r[6]) for r in popularity] == [("a", "shoes", "10", one), ("b", "shoes", "20.5", one),
                                                              ("c", None, None, one)]
    pairs = order_pairs(e, H)
    assert sorted((a, b) for _e, a, b, _w in pairs) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"),
                                                        ("c", "a"), ("c", "b")]
    assert {w for *_rest, w in pairs} == {forward_log2(BOUGHT_TOGETHER_WEIGHT, at, H)}


def test_a_purchase_without_lines_counts_its_own_product_or_only_the_visit():
    with_product = event(EventKind.PURCHASE, product_id="p9", category="hats", price=Decimal("5"))
    assert set(facets(interest_rows(with_product, H))) == {("hour", "9"), ("product", "p9"), ("bought", "p9"),
                                                           ("category", "hats")}
    assert len(popularity_rows(with_product, H, TREND_H)) == 1 and order_pairs(with_product, H) == []
    bare = event(EventKind.PURCHASE, order_id="o1", revenue=Decimal("12"))
    assert set(facets(interest_rows(bare, H))) == {("hour", "9")}
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


def test_an_empty_category_is_no_category():
    e = event(EventKind.PRODUCT_VIEW, product_id="p1", category="")
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
    events = [event(EventKind.PRODUCT_VIEW, "e1", product_id="a", category="c"),
              event(EventKind.PURCHASE, "e2", products=(ProductLine(product_id="a"), ProductLine(product_id="b")))]
    batch = interest_batch(events, H, TREND_H)
    assert batch["half_life_s"] == H
    assert len(batch["interests"]) == 3 + 5 and len(batch["popularity"]) == 3 and len(batch["pairs"]) == 2
    assert {r[0] for r in batch["interests"]} == {"e1", "e2"}


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
