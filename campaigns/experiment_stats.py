"""The statistics of a campaign experiment: tests, intervals, power. Pure (standard library only, so the
runtime needs no scipy); tests/unit/test_experiment_stats.py holds every function to scipy/statsmodels.

- conversion: ``lift.lift`` (Wald interval of the difference, Katz interval of the ratio) and the
  matching unpooled Wald z-test;
- revenue per user: Welch's t on winsorised values (``winsorise``: the 99th percentile of the pooled
  amounts above 0, the 1st of those below 0);
- power: the minimum detectable effect at 80% power of a two-sided 5% test;
- several variants against one holdout: Holm's step-down adjustment of their p-values.
"""

import math
from statistics import NormalDist

ALPHA = 0.05
POWER = 0.80
WINSOR_PERCENTILES = (1.0, 99.0)
_NORMAL = NormalDist()


def normal_quantile(p: float) -> float:
    return _NORMAL.inv_cdf(p)


def normal_two_sided_p(z: float) -> float:
    return 2 * _NORMAL.cdf(-abs(z))


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny, c, d = 1e-300, 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _incomplete_beta_fraction(a, b, x) / a
    return 1 - front * _incomplete_beta_fraction(b, a, 1 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` (real, > 0) degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t: bisection on ``t_sf`` to machine precision."""
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_sf(high, df) > 1 - p:
        low, high = high, high * 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_sf(middle, df) > 1 - p else (low, middle)
    return (low + high) / 2


def conversion_p_value(treated: int, treated_converted: int, holdout: int, holdout_converted: int) -> float | None:
    """Two-sided p of the unpooled Wald z-test, the test that ``lift``'s Wald interval inverts (so the
    interval excludes 0 exactly when p < 0.05). None when the standard error is 0 (no variation)."""
    if not treated or not holdout:
        return None
    pt, ph = treated_converted / treated, holdout_converted / holdout
    se = math.sqrt(pt * (1 - pt) / treated + ph * (1 - ph) / holdout)
    return normal_two_sided_p((pt - ph) / se) if se > 0 else None


def conversion_mde(treated: int, holdout: int, holdout_rate: float, alpha: float = ALPHA,
                   power: float = POWER) -> float | None:
    """The smallest rise in conversion (absolute) a two-sided ``alpha`` test detects with ``power``, from
    the holdout's rate, on Cohen's arcsine scale: h = (z(1-alpha/2) + z(power)) * sqrt(1/n_t + 1/n_h) and
    rate = sin(asin(sqrt(holdout_rate)) + h/2)^2, capped at 1 (as statsmodels' NormalIndPower defines power)."""
    if not treated or not holdout:
        return None
    h = (normal_quantile(1 - alpha / 2) + normal_quantile(power)) * math.sqrt(1 / treated + 1 / holdout)
    angle = min(math.pi / 2, math.asin(math.sqrt(holdout_rate)) + h / 2)
    return math.sin(angle) ** 2 - holdout_rate


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def winsorise(*groups: list[float], percentiles: tuple[float, float] = WINSOR_PERCENTILES):
    """Each group's values clipped to bounds from the groups pooled: at most the ``percentiles[1]``-th
    percentile of the amounts above 0, at least the ``percentiles[0]``-th of those below 0 (net refunds).
    One whale order (or refund) moves a mean of skewed money by a lot; clipping both arms at the same
    bounds keeps them comparable. The zeros (users who bought nothing) are left out of the percentiles:
    where fewer than 1% buy, the pooled 99th percentile would be 0 and clip every order away."""
    pooled = [v for group in groups for v in group]
    above, below = [v for v in pooled if v > 0], [v for v in pooled if v < 0]
    low = percentile(below, percentiles[0]) if below else 0.0
    high = percentile(above, percentiles[1]) if above else 0.0
    return [[min(max(v, low), high) for v in group] for group in groups], (low, high)


def _mean_var(values: list[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    return mean, math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def welch(treated: list[float], holdout: list[float], alpha: float = ALPHA) -> dict | None:
    """Welch's t-test and interval for mean(treated) - mean(holdout) (unequal variances, Welch-Satterthwaite
    degrees of freedom); the relative difference's interval by the delta method on the log ratio of means.
    None with fewer than 2 values in a group or no variance at all."""
    if len(treated) < 2 or len(holdout) < 2:
        return None
    (mt, vt), (mh, vh) = _mean_var(treated), _mean_var(holdout)
    qt, qh = vt / len(treated), vh / len(holdout)
    if qt + qh == 0:
        return None
    se = math.sqrt(qt + qh)
    df = (qt + qh) ** 2 / (qt ** 2 / (len(treated) - 1) + qh ** 2 / (len(holdout) - 1))
    t = (mt - mh) / se
    margin = t_quantile(1 - alpha / 2, df) * se
    out = {"treated_mean": mt, "holdout_mean": mh, "difference": mt - mh,
           "difference_ci": [mt - mh - margin, mt - mh + margin], "t": t, "df": df,
           "p_value": 2 * t_sf(abs(t), df), "relative": None, "relative_ci": None}
    if mt > 0 and mh > 0:
        se_log, z = math.sqrt(qt / mt ** 2 + qh / mh ** 2), normal_quantile(1 - alpha / 2)
        out.update(relative=mt / mh - 1, relative_ci=[math.exp(math.log(mt / mh) + s * z * se_log) - 1
                                                      for s in (-1, 1)])
    return out


def mean_mde(treated: list[float], holdout: list[float], alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest difference in means a two-sided ``alpha`` test detects with ``power`` at the observed
    variances (normal approximation)."""
    if len(treated) < 2 or len(holdout) < 2:
        return None
    se = math.sqrt(_mean_var(treated)[1] / len(treated) + _mean_var(holdout)[1] / len(holdout))
    return (normal_quantile(1 - alpha / 2) + normal_quantile(power)) * se


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error at alpha over the variants); None stays None."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(difference: float | None, p_value: float | None, alpha: float = ALPHA) -> str:
    if difference is None or p_value is None:
        return "insufficient_data"
    if p_value >= alpha:
        return "not_significant"
    return "significant_increase" if difference > 0 else "significant_decrease"
