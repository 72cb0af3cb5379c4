"""When to try a delivery again: exponential backoff with full jitter, Retry-After honoured. Pure."""

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 10     # attempts after the first; then the batch is given up (counted in ``failed``)
    base_s: float = 0.5       # first backoff ceiling; doubles on each attempt
    cap_s: float = 30.0       # ceiling of a backoff
    max_retry_after_s: float = 300.0  # a server's Retry-After is obeyed up to this long

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random = random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt))  # "full jitter"
        if retry_after is None:
            return backoff
        return max(backoff, min(retry_after, self.max_retry_after_s))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())
