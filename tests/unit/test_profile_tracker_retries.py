"""A client's retry reaches the worker again: the profile counts its events once, and so must what
the tracker hands on to the metric windows (a dict stands in for the Faust table)."""

import asyncio
from datetime import datetime, timedelta, timezone

from spoor.events import Event, EventKind, encode_events
from spoor.stream_processors.profile import UserProfile
from spoor.stream_processors.profile_tracker import ProfileTracker
from tests.support.tracker_doubles import DictTable

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


class NoWrites:
    def write_batch(self, rows, events, derived, erased_users=()) -> None:
        pass


def order(user: str, number: int) -> Event:
    return Event(event_id=f"{user}-order-{number}", kind=EventKind.PURCHASE, name="Order Completed",
                 user_key=user, event_time=T0 + timedelta(seconds=number), received_at=T0 + timedelta(seconds=number),
                 order_id=f"o-{user}-{number}", revenue="10.00", currency="EUR")


def test_a_retried_request_is_handed_on_once():
    tracker = ProfileTracker(DictTable(), NoWrites(), dedupe_window=512, send_bad_row=None)
    first_request = encode_events([order("u1", 1), order("u1", 2)])
    retry_with_one_more = encode_events([order("u1", 1), order("u1", 2), order("u1", 3)])

    first = asyncio.run(tracker.process([(0, first_request)]))
    # Redelivered in the same batch as its retry, and once more on its own.
    second = asyncio.run(tracker.process([(0, retry_with_one_more), (0, first_request)]))
    third = asyncio.run(tracker.process([(0, first_request)]))

    assert [(p, e.event_id) for p, e in first] == [(0, "u1-order-1"), (0, "u1-order-2")]
    assert [(p, e.event_id) for p, e in second] == [(0, "u1-order-3")]
    assert third == []
    profile = UserProfile.decode(tracker.table[b"u1"])
    assert (profile.events, profile.orders) == (3, 3)
