"""Channel attribution of one person's orders and refunds across their sessions. Pure: no I/O, no clock.

The contract (docs/attribution.md):
- A touch is one of the person's sessions that started in the look-back window of a conversion,
  ``[converted_at - window, converted_at]``, in the order they started (then by session id). An order
  with no such session has one touch, ``direct``, with no session.
- A session's channel is its UTM source (``source / medium`` when it has a medium), else its referrer's
  host, else ``direct`` (``channel``).
- Models give each touch a weight (exact fractions, summing to 1): ``first_touch``, ``last_touch``,
  ``linear`` and ``position_based`` (40% first, 40% last, 20% shared by the touches between; two
  touches get half each).
- An order's amount is split over its touches by the largest remainder (``split``), in cents, or in
  ten-thousandths for an amount with sub-cent digits: the shares always add up to the amount exactly.
- A refund naming an order of the person is split with that order's touches and weights (the same
  shares, negated); a refund naming no order of theirs is attributed like an order at its own time.
- An order id repeated by several purchase events is one order: the earliest (then smallest event id).
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

MODELS = ("first_touch", "last_touch", "linear", "position_based")
DIRECT = "direct"
ORDER, REFUND = "order", "refund"
CENT, TEN_THOUSANDTH = Decimal("0.01"), Decimal("0.0001")
# The same rule as sessions.traffic_source (storage/analytics_tables.py): scheme://host...
REFERRER_HOST = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)")


@dataclass(frozen=True, slots=True)
class Touch:
    session_id: str | None
    started_at: datetime | None
    channel: str


@dataclass(frozen=True, slots=True)
class Conversion:
    conversion_id: str  # the event id of the order or refund
    kind: str  # ORDER | REFUND
    order_id: str | None
    at: datetime
    amount: Decimal  # >= 0, as the event carried it
    currency: str | None = None


def channel(utm_source: str | None, utm_medium: str | None, referrer: str | None) -> str:
    if utm_source:
        return f"{utm_source} / {utm_medium}" if utm_medium else utm_source
    host = REFERRER_HOST.match(referrer or "")
    return host.group(1).lower() if host else DIRECT


def weights(model: str, touches: int) -> list[Fraction]:
    """Each touch's weight under ``model``, for ``touches`` >= 1; they add up to 1 exactly."""
    if touches < 1:
        raise ValueError("a conversion has at least one touch")
    if model == "first_touch":
        return [Fraction(1)] + [Fraction(0)] * (touches - 1)
    if model == "last_touch":
        return [Fraction(0)] * (touches - 1) + [Fraction(1)]
    if model == "linear":
        return [Fraction(1, touches)] * touches
    if model == "position_based":
        if touches <= 2:
            return [Fraction(1, touches)] * touches
        middle = Fraction(1, 5) / (touches - 2)
        return [Fraction(2, 5)] + [middle] * (touches - 2) + [Fraction(2, 5)]
    raise ValueError(f"unknown attribution model {model!r}; one of {', '.join(MODELS)}")


def split(amount: Decimal, shares: Sequence[Fraction]) -> list[Decimal]:
    """``amount`` split in proportion to ``shares`` (adding up to 1), by the largest remainder: each share
    is rounded down to the unit (a cent, or 0.0001 when the amount has sub-cent digits), and the units
    left over go one each to the largest remainders, the earliest share first on a tie. The parts add up
    to ``amount`` exactly; a negative amount is split as its opposite, negated."""
    if sum(shares) != 1:
        raise ValueError("shares must add up to 1")
    unit = CENT if amount == amount.quantize(CENT) else TEN_THOUSANDTH
    units = abs(amount) / unit
    if units != units.to_integral_value():
        raise ValueError(f"{amount} has more than 4 decimal places")
    units = int(units)
    exact = [units * share for share in shares]
    parts = [int(e) for e in exact]  # floor: every share is >= 0
    left = units - sum(parts)
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in by_remainder[:left]:
        parts[i] += 1
    sign = -1 if amount < 0 else 1
    return [sign * part * unit for part in parts]


def touches_of(at: datetime, sessions: Sequence[Touch], window: timedelta) -> list[Touch]:
    """The sessions (any order) that started in ``[at - window, at]``, in order; ``direct`` if none."""
    found = sorted((s for s in sessions if at - window <= s.started_at <= at),
                   key=lambda s: (s.started_at, s.session_id or ""))
    return found or [Touch(None, None, DIRECT)]


def orders_once(conversions: Iterable[Conversion]) -> list[Conversion]:
    """Refunds, and one order per order id (the earliest, then the smallest event id)."""
    chosen: dict[str, Conversion] = {}
    kept = []
    for conversion in sorted(conversions, key=lambda c: (c.at, c.conversion_id)):
        if conversion.kind == ORDER and conversion.order_id is not None:
            if conversion.order_id in chosen:
                continue
            chosen[conversion.order_id] = conversion
        kept.append(conversion)
    return kept


def attribute(conversions: Iterable[Conversion], sessions: Sequence[Touch], window: timedelta,
              models: Sequence[str] = MODELS) -> list[dict]:
    """The attribution rows of one person: one per conversion, model and touch with a weight above 0,
    with ``conversion_id``, ``kind``, ``order_id``, ``converted_at``, ``currency``, ``model``, ``touch``
    (its position), ``session_id``, ``channel`` and ``amount`` (negative for a refund)."""
    kept = orders_once(conversions)
    order_touches = {c.order_id: touches_of(c.at, sessions, window)
                     for c in kept if c.kind == ORDER and c.order_id is not None}
    rows = []
    for conversion in kept:
        if conversion.kind == REFUND and conversion.order_id in order_touches:
            touches = order_touches[conversion.order_id]
        elif conversion.kind == ORDER and conversion.order_id is not None:
            touches = order_touches[conversion.order_id]
        else:
            touches = touches_of(conversion.at, sessions, window)
        amount = -conversion.amount if conversion.kind == REFUND else conversion.amount
        for model in models:
            shares = weights(model, len(touches))
            for position, (touch, share, part) in enumerate(zip(touches, shares, split(amount, shares))):
                if share:
                    rows.append({"conversion_id": conversion.conversion_id, "kind": conversion.kind,
                                 "order_id": conversion.order_id, "converted_at": conversion.at,
                                 "currency": conversion.currency, "model": model, "touch": position,
                                 "session_id": touch.session_id, "channel": touch.channel, "amount": part})
    return rows
