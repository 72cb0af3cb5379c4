"""Conversion lift of treated versus holdout users, with 95% confidence intervals. Pure.

- absolute lift = p_treated - p_holdout, Wald interval;
- relative lift = p_treated / p_holdout - 1, interval from the log risk ratio (Katz), undefined when
  either group has no conversion.
"""

import math

Z95 = 1.959963984540054


def lift(treated: int, treated_converted: int, holdout: int, holdout_converted: int, z: float = Z95) -> dict:
    out = {"treated": treated, "treated_converted": treated_converted, "holdout": holdout,
           "holdout_converted": holdout_converted, "treated_rate": None, "holdout_rate": None,
           "absolute_lift": None, "absolute_lift_ci": None, "relative_lift": None, "relative_lift_ci": None}
    if treated == 0 or holdout == 0:
        return out
    pt, ph = treated_converted / treated, holdout_converted / holdout
    out.update(treated_rate=pt, holdout_rate=ph, absolute_lift=pt - ph)
    se = math.sqrt(pt * (1 - pt) / treated + ph * (1 - ph) / holdout)
    out["absolute_lift_ci"] = [pt - ph - z * se, pt - ph + z * se]
    if treated_converted and holdout_converted:
        log_rr = math.log(pt / ph)
        se_log = math.sqrt(1 / treated_converted - 1 / treated + 1 / holdout_converted - 1 / holdout)
        out["relative_lift"] = pt / ph - 1
        out["relative_lift_ci"] = [math.exp(log_rr - z * se_log) - 1, math.exp(log_rr + z * se_log) - 1]
    return out
