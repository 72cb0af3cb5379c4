"""The session rule of stream_processors/interests.py worked out the obvious way, for tests to hold the
worker's incremental walk to (docs/recommendations.md, Interests and affinity).

Events are taken in arrival order. For each event of a user, with the user's events before it in hand:

- the session continues when the latest event time among them is at most 30 minutes from the event's
  (either side); otherwise the event starts a session (its hour and device count), unless it is older
  than that latest time, a late event of an earlier session, which belongs to no session;
- a product view (1) or cart add (2) that continues a session pairs, both ways, with the last 3 distinct
  products viewed or added in the session's events before it (the event's own product skipped).
"""

from collections import defaultdict
from datetime import timezone

from spoor.events import Event, EventKind

GAP_S = 30 * 60
PAIRED = {EventKind.PRODUCT_VIEW: 1.0, EventKind.CART_ADD: 2.0}
LAST = 3


def walk(events: list[Event]) -> tuple[list[tuple], list[tuple]]:
    """(pairs, session starts) in arrival order: pairs as (event id, product, neighbour, weight, time),
    starts as (event id, user key, hour in UTC, device)."""
    before: dict[str, list[Event]] = defaultdict(list)  # every earlier event of the user
    session: dict[str, list[Event]] = defaultdict(list)  # the events of the user's current session
    pairs, starts = [], []
    for e in events:
        t = e.event_time.timestamp()
        latest = max((x.event_time.timestamp() for x in before[e.user_key]), default=None)
        continues = latest is not None and abs(t - latest) <= GAP_S
        if continues:
            if e.kind in PAIRED and e.product_id:
                recent: list[str] = []
                for x in reversed(session[e.user_key]):
                    if x.kind in PAIRED and x.product_id and x.product_id not in recent:
                        recent.append(x.product_id)
                for other in recent[:LAST]:
                    if other != e.product_id:
                        pairs.append((e.event_id, e.product_id, other, PAIRED[e.kind], t))
                        pairs.append((e.event_id, other, e.product_id, PAIRED[e.kind], t))
            session[e.user_key].append(e)
        else:
            starts.append((e.event_id, e.user_key, e.event_time.astimezone(timezone.utc).hour, e.device))
            if latest is None or t > latest:
                session[e.user_key] = [e]
        before[e.user_key].append(e)
    return pairs, starts
