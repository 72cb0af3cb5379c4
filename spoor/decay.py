"""Time-decayed weights as forward-decayed logarithms, ``log2(w) + t / H`` (Cormode et al., "Forward
Decay", ICDE 2009): stream_processors/interests.py makes them, storage adds them up (and PostgreSQL's
``spoor_log2_add``, migration 0016, is the same sum)."""

import math

FLOOR_EXPONENT = -1000.0  # 2^-1000 is still a float; smaller differences count as nothing


def log2_add(a: float | None, b: float | None) -> float | None:
    """log2(2^a + 2^b); None stands for a weight of zero."""
    if a is None:
        return b
    if b is None:
        return a
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log2(1.0 + 2.0 ** max(FLOOR_EXPONENT, low - high))
