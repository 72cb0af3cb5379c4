"""The demo's alert story: steady shoppers with checkout broken for a while, time-compressed.

Event timestamps carry the story, so 50 minutes of shop traffic take seconds
to send: shoppers arrive all along (from ``WARM_UP_MINUTES`` before the story, so that its first
windows see the orders of earlier carts: a shop that has just opened has carts but no orders yet, which
the rule took for a collapse in about 2% of runs), and between ``OUTAGE`` minutes no order
completes (the "Order Completed" calls fail: checkout is broken). The
``checkout-conversion-collapse`` rule (alerts/rules.yaml) fires on the 5-minute
windows of the outage and resolves once orders come back. The story ends now: no
event may claim a time in the future (SPOOR_MAX_FUTURE_EVENT_S), so journeys still
going on are cut at the present. A re-run within the hour finds the story's windows
already closed (its events are then late for the metrics) and says so instead.
"""

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, text

from spoor.alerts.store import list_alerts
from spoor.cli.simulate import catalog, shopper_journey, simulate

STORY_MINUTES = 50
WARM_UP_MINUTES = 75  # steady shoppers arrive this long before the story: its first windows have orders, and
# the carts abandoned in its first hour are due (cart_abandonment_delay_s) by the end: the campaign's audience
SHOPPERS_PER_MINUTE = 12
OUTAGE = (15, 30)  # minutes into the story


@dataclass(frozen=True)
class Story:
    start: datetime
    outage_start: datetime
    outage_end: datetime
    closed_until: datetime | None = None  # the stack's metric windows were closed up to here before the story

    @property
    def windows_open(self) -> bool:
        return self.closed_until is None or self.closed_until < self.start


def story_start(now: datetime) -> datetime:
    """A 5-minute boundary, so that the story's last minute ends at least 5 minutes before ``now``."""
    start = now - timedelta(minutes=STORY_MINUTES + 10)
    return start.replace(second=0, microsecond=0) + timedelta(minutes=5 - start.minute % 5)


def demo_traffic(engine: Engine, users: int, seed: int) -> tuple[list[dict], Story]:
    """The demo's shoppers (``simulate``) plus steady ones, with orders lost during the outage."""
    now = datetime.now(timezone.utc)
    start = story_start(now)
    with engine.connect() as conn:
        closed = conn.execute(text("SELECT max(closed_until) FROM metric_watermarks")).scalar_one()
    story = Story(start, start + timedelta(minutes=OUTAGE[0]), start + timedelta(minutes=OUTAGE[1]), closed)
    rng = random.Random(f"steady-{seed}")  # not simulate()'s stream: message ids must differ
    products = catalog()
    messages = simulate(users, seed=seed, start=start, spread_s=40 * 60, login_at_checkout=True,
                        channels=True)
    for minute in range(-WARM_UP_MINUTES, STORY_MINUTES):
        for i in range(SHOPPERS_PER_MINUTE):
            at = start + timedelta(minutes=minute, seconds=rng.randint(0, 59))
            messages += shopper_journey(rng, f"steady-{seed}-{minute}-{i}", products, at, login_at_checkout=True,
                                       channels=True)
    outage = (story.outage_start.isoformat(), story.outage_end.isoformat())
    present = now.isoformat()
    messages = [m for m in messages if m["timestamp"] <= present  # journeys not over yet are cut here
                and not (m.get("event") == "Order Completed" and outage[0] <= m["timestamp"] < outage[1])]
    messages.sort(key=lambda m: m["timestamp"])
    return messages, story


def wait_for_alerts(engine: Engine, story: Story, timeout_s: float = 90) -> list[dict]:
    """The alerts of the story's period, once the checkout alert has resolved (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alerts = [a for a in list_alerts(engine, limit=200) if a["started_at"] >= story.start]
        if any(a["rule_id"] == "checkout-conversion-collapse" and a["status"] == "resolved" for a in alerts):
            return alerts
        if time.monotonic() > deadline:
            return alerts
        time.sleep(0.5)


def print_alerts(alerts: list[dict], story: Story) -> None:
    print(f"  alerts (event time; checkout broken {story.outage_start:%H:%M}-{story.outage_end:%H:%M} UTC)")
    if not story.windows_open:
        print(f"      the stack's metric windows were already closed up to {story.closed_until:%H:%M} UTC by an "
              "earlier run, so this story's events are late for them; a run an hour later (or on a fresh "
              "stack) shows the checkout alert")
    shown = [a for a in alerts if a["status"] in ("firing", "resolved")]
    if not shown:
        print("      none fired")
    for a in sorted(shown, key=lambda a: a["started_at"]):
        worst = a["evidence"].get("worst") or {}
        fired = f"fired {a['fired_at']:%H:%M}" if a["fired_at"] else "fired -"
        resolved = f"resolved {a['resolved_at']:%H:%M}" if a["resolved_at"] else "still firing"
        print(f"      {a['severity']:<8} {a['rule_id']} ({a['dimension']}): {fired}, {resolved}; "
              f"worst window observed {worst.get('observed')!s:.6} vs expected {worst.get('expected')!s:.6}")
