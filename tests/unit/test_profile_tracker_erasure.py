"""An erasure record on the events topic, read by a running worker: the user's state and rows go,
in order with the user's events (a dict stands in for the Faust table; writes are recorded)."""

import asyncio
from datetime import datetime, timedelta, timezone

from spoor.events import Event, EventKind, encode_events, erasure_record
from spoor.stream_processors.profile import UserProfile
from spoor.stream_processors.profile_tracker import ProfileTracker
from tests.support.tracker_doubles import DictTable

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


class RecordedWrites:
    def __init__(self):
        self.batches = []

    def write_batch(self, rows, events, derived, erased_users=()) -> None:
        self.batches.append({"rows": rows, "events": [e.event_id for e in events], "erased": list(erased_users)})


def view(user: str, number: int) -> bytes:
    return encode_events([Event(event_id=f"{user}-{number}", kind=EventKind.PAGE_VIEW, name="Page Viewed",
                                user_key=user, event_time=T0 + timedelta(seconds=number),
                                received_at=T0 + timedelta(seconds=number))])


def test_events_before_the_erasure_record_go_and_events_after_it_start_a_new_profile():
    writes = RecordedWrites()
    tracker = ProfileTracker(DictTable(), writes, dedupe_window=512, send_bad_row=None)
    asyncio.run(tracker.process([(0, view("u1", 1)), (0, view("u1", 2)), (0, view("u2", 1))]))

    erased = asyncio.run(tracker.process(
        [(0, view("u1", 3)), (0, erasure_record("u1")), (0, view("u1", 4)), (0, view("u2", 2))]))

    assert [e.event_id for _p, e in erased] == ["u1-4", "u2-2"]
    batch = writes.batches[-1]
    assert batch["erased"] == ["u1"]
    assert batch["events"] == ["u1-4", "u2-2"]  # u1-3 came before the erasure record
    assert sorted((r["user_key"], r["events"]) for r in batch["rows"]) == [("u1", 1), ("u2", 2)]
    assert UserProfile.decode(tracker.table[b"u1"]).events == 1
    assert UserProfile.decode(tracker.table[b"u2"]).events == 2


def test_an_erasure_record_alone_deletes_the_users_state():
    writes = RecordedWrites()
    tracker = ProfileTracker(DictTable(), writes, dedupe_window=512, send_bad_row=None)
    asyncio.run(tracker.process([(0, view("u1", 1))]))

    asyncio.run(tracker.process([(0, erasure_record("u1"))]))

    assert b"u1" not in tracker.table
    assert writes.batches[-1] == {"rows": [], "events": [], "erased": ["u1"]}
    # Erasing a user the worker never saw is harmless (the command may run twice).
    asyncio.run(tracker.process([(0, erasure_record("u-unknown"))]))
    assert writes.batches[-1]["erased"] == ["u-unknown"]
