"""segments/attribution_models.py: channels, model weights, the largest-remainder split, and whole journeys
with answers worked out by hand."""

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest

from spoor.segments import attribution_models as am
from spoor.segments.attribution_models import DIRECT, MODELS, ORDER, REFUND, Conversion, Touch

attribute, channel, split, weights = am.attribute, am.channel, am.split, am.weights

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
WINDOW = timedelta(days=30)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def by(rows, model):
    return [(r["channel"], r["amount"]) for r in rows if r["model"] == model]


def test_channel_is_utm_source_and_medium_else_the_referrers_host_else_direct():
    assert channel("google", "cpc", "https://www.bing.com/") == "google / cpc"
    assert channel("newsletter", None, None) == "newsletter"
    assert channel(None, "cpc", "HTTPS://WWW.Facebook.com:443/path?q=1") == "www.facebook.com"
    assert channel("", None, "android-app://com.google.android.gm/") == "com.google.android.gm"
    assert channel(None, None, "not a url") == DIRECT
    assert channel(None, None, None) == DIRECT


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_weights_add_up_to_one_and_have_their_shape(n):
    for model in MODELS:
        assert sum(weights(model, n)) == 1
    assert weights("first_touch", n)[0] == 1 and weights("last_touch", n)[-1] == 1
    assert set(weights("linear", n)) == {Fraction(1, n)}
    position = weights("position_based", n)
    if n == 1:
        assert position == [1]
    elif n == 2:
        assert position == [Fraction(1, 2)] * 2
    else:
        assert position[0] == position[-1] == Fraction(2, 5)
        assert set(position[1:-1]) == {Fraction(1, 5) / (n - 2)}


def test_unknown_model_and_no_touch_are_refused():
    with pytest.raises(ValueError, match="unknown attribution model"):
        weights("time_decay", 2)
    with pytest.raises(ValueError):
        weights("linear", 0)


def test_split_in_cents_by_largest_remainder_earliest_first_on_ties():
    assert split(Decimal("10.00"), weights("linear", 3)) == [Decimal("3.34"), Decimal("3.33"), Decimal("3.33")]
    assert split(Decimal("0.01"), weights("linear", 3)) == [Decimal("0.01"), Decimal("0"), Decimal("0")]
    # 40/20/40 of 0.05: 2, 1, 2 cents exactly; 40/10/10/40 of 0.07: 2.8, 0.7, 0.7, 2.8 -> 3, 1, 0, 3
    assert split(Decimal("0.05"), weights("position_based", 3)) == [Decimal("0.02"), Decimal("0.01"), Decimal("0.02")]
    assert split(Decimal("0.07"), weights("position_based", 4)) == [
        Decimal("0.03"), Decimal("0.01"), Decimal("0"), Decimal("0.03")]
    # sub-cent amounts split in ten-thousandths; refunds as the opposite
    assert split(Decimal("1.0001"), weights("linear", 2)) == [Decimal("0.5001"), Decimal("0.5000")]
    assert split(Decimal("-10"), weights("linear", 3)) == [Decimal("-3.34"), Decimal("-3.33"), Decimal("-3.33")]
    with pytest.raises(ValueError):
        split(Decimal("1.00001"), weights("linear", 2))


def test_split_always_adds_up_exactly():
    rng = random.Random(23)
    for _ in range(3000):
        amount = Decimal(rng.randint(0, 10**9)) / Decimal(rng.choice([1, 100, 10000]))
        n = rng.randint(1, 40)
        for model in MODELS:
            parts = split(amount, weights(model, n))
            assert sum(parts) == amount and len(parts) == n
            assert all(p >= 0 for p in parts)
            exact = [amount * Decimal(w.numerator) / Decimal(w.denominator) for w in weights(model, n)]
            unit = Decimal("0.01") if amount == amount.quantize(Decimal("0.01")) else Decimal("0.0001")
            assert all(abs(p - e) < unit for p, e in zip(parts, exact))  # each part within one unit of exact


def test_a_journey_over_three_channels_under_each_model():
    sessions = [Touch("s1", day(-40), "google / cpc"),  # outside the 30-day window
                Touch("s2", day(-20), "google / cpc"), Touch("s3", day(-5), "www.facebook.com"),
                Touch("s4", day(-1), "newsletter / email"), Touch("s5", day(0), DIRECT),
                Touch("s6", day(1), "bing.com")]  # after the order
    rows = attribute([Conversion("e1", ORDER, "o1", day(0) + timedelta(minutes=5), Decimal("100.00"), "EUR")],
                     sessions, WINDOW)
    assert by(rows, "first_touch") == [("google / cpc", Decimal("100.00"))]
    assert by(rows, "last_touch") == [(DIRECT, Decimal("100.00"))]
    assert by(rows, "linear") == [("google / cpc", Decimal("25.00")), ("www.facebook.com", Decimal("25.00")),
                                  ("newsletter / email", Decimal("25.00")), (DIRECT, Decimal("25.00"))]
    assert by(rows, "position_based") == [("google / cpc", Decimal("40.00")), ("www.facebook.com", Decimal("10.00")),
                                          ("newsletter / email", Decimal("10.00")), (DIRECT, Decimal("40.00"))]
    assert {r["currency"] for r in rows} == {"EUR"} and {r["session_id"] for r in rows} == {"s2", "s3", "s4", "s5"}


def test_the_window_includes_its_ends():
    order_at = day(0)
    sessions = [Touch("edge", order_at - WINDOW, "a"), Touch("same", order_at, "b"),
                Touch("just-out", order_at - WINDOW - timedelta(microseconds=1), "c")]
    rows = attribute([Conversion("e1", ORDER, "o1", order_at, Decimal("2"))], sessions, WINDOW, ["linear"])
    assert [(r["session_id"], r["amount"]) for r in rows] == [("edge", Decimal("1.00")), ("same", Decimal("1.00"))]


def test_an_order_without_a_session_is_direct():
    rows = attribute([Conversion("e1", ORDER, "o1", day(0), Decimal("9.99"))], [], WINDOW)
    assert {(r["model"], r["channel"], r["session_id"], r["amount"]) for r in rows} == {
        (m, DIRECT, None, Decimal("9.99")) for m in MODELS}


def test_a_refund_takes_back_in_the_orders_shares_and_a_full_refund_nets_zero():
    sessions = [Touch("s1", day(-3), "a"), Touch("s2", day(-2), "b"), Touch("s3", day(-1), "c")]
    conversions = [Conversion("e1", ORDER, "o1", day(0), Decimal("10.00")),
                   Conversion("r1", REFUND, "o1", day(2), Decimal("10.00")),  # sessions after the order: ignored
                   Conversion("r2", REFUND, "o1", day(3), Decimal("1.00"))]
    rows = attribute(conversions, sessions + [Touch("s9", day(1), "z")], WINDOW)
    for model in MODELS:
        net: dict[str, Decimal] = {}
        for r in rows:
            if r["model"] == model and r["conversion_id"] in ("e1", "r1"):
                net[r["channel"]] = net.get(r["channel"], 0) + r["amount"]
        assert set(net.values()) == {0}
    partial = [(r["channel"], r["amount"]) for r in rows if r["model"] == "linear" and r["conversion_id"] == "r2"]
    assert partial == [("a", Decimal("-0.34")), ("b", Decimal("-0.33")), ("c", Decimal("-0.33"))]


def test_a_refund_of_an_unknown_order_is_attributed_at_its_own_time():
    rows = attribute([Conversion("r1", REFUND, "C123", day(0), Decimal("5"))],
                     [Touch("s1", day(-1), "a"), Touch("s2", day(1), "b")], WINDOW, ["last_touch"])
    assert [(r["channel"], r["amount"], r["kind"]) for r in rows] == [("a", Decimal("-5.00"), REFUND)]


def test_a_repeated_order_id_is_one_order_and_orders_without_id_each_count():
    conversions = [Conversion("e2", ORDER, "o1", day(0), Decimal("7")), Conversion("e1", ORDER, "o1", day(0),
                                                                                   Decimal("7")),
                   Conversion("e3", ORDER, None, day(1), Decimal("1")), Conversion("e4", ORDER, None, day(1),
                                                                                  Decimal("1"))]
    rows = attribute(conversions, [], WINDOW, ["linear"])
    assert sorted(r["conversion_id"] for r in rows) == ["e1", "e3", "e4"]


def test_a_late_session_changes_the_answer_by_recomputation():
    order = [Conversion("e1", ORDER, "o1", day(0), Decimal("3.00"))]
    before = attribute(order, [Touch("s2", day(-1), "b")], WINDOW, ["first_touch", "linear"])
    after = attribute(order, [Touch("s2", day(-1), "b"), Touch("s1", day(-2), "a")], WINDOW,
                      ["first_touch", "linear"])
    assert by(before, "first_touch") == [("b", Decimal("3.00"))]
    assert by(after, "first_touch") == [("a", Decimal("3.00"))]
    assert by(after, "linear") == [("a", Decimal("1.50")), ("b", Decimal("1.50"))]
