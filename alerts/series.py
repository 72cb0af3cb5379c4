"""Business metrics as functions of a window's totals. Pure.

A window's totals are the sums over partitions of the ``metric_windows``
columns (``COUNTS``). Distinct counts add up across partitions because events
are partitioned by user: a user (and their sessions) lives on one partition.
Each metric gives a value and a volume: the volume is what the
minimum-volume guard looks at (the denominator of a rate).
"""

from collections.abc import Callable

from spoor.metric_columns import AMOUNTS, COUNTS


def _ratio(numerator: str, denominator: str) -> Callable[[dict], tuple[float | None, float]]:
    def metric(totals: dict) -> tuple[float | None, float]:
        base = float(totals.get(denominator) or 0)
        return (float(totals.get(numerator) or 0) / base if base else None), base
    return metric


def _count(column: str) -> Callable[[dict], tuple[float | None, float]]:
    def metric(totals: dict) -> tuple[float | None, float]:
        value = float(totals.get(column) or 0)
        return value, value
    return metric


def _rate_of_all(column: str) -> Callable[[dict], tuple[float | None, float]]:
    """Share of everything received (events + dead letters) that ``column`` counts."""
    def metric(totals: dict) -> tuple[float | None, float]:
        received = float(totals.get("events") or 0) + float(totals.get("dead_letters") or 0)
        return (float(totals.get(column) or 0) / received if received else None), received
    return metric


METRICS: dict[str, Callable[[dict], tuple[float | None, float]]] = {
    **{column: _count(column) for column in COUNTS + AMOUNTS},
    "view_to_cart": _ratio("carters", "viewers"),  # users who added to cart / users who viewed a product
    "cart_to_purchase": _ratio("buyers", "carters"),  # users who ordered / users who added to cart
    "dead_letter_rate": _rate_of_all("dead_letters"),
    "collector_error_rate": _rate_of_all("collector_rejects"),
}


def metric_value(metric: str, totals: dict) -> tuple[float | None, float]:
    """(value, volume) of ``metric`` for one window's totals; value None when undefined (0/0)."""
    return METRICS[metric](totals)
