"""A large batch is folded without holding the event loop (a dict stands in for the Faust table,
and the PostgreSQL write is recorded instead of made: this checks the fold's scheduling only)."""

import asyncio
from datetime import datetime, timedelta, timezone

from spoor.events import Event, EventKind, encode_events
from spoor.stream_processors.profile import UserProfile
from spoor.stream_processors.profile_tracker import ProfileTracker
from tests.support.tracker_doubles import DictTable

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


class RecordedWrites:
    def __init__(self, ticks: list):
        self.ticks = ticks
        self.batches = []
        self.ticks_before_write = None

    def write_batch(self, rows, events, derived, erased_users=()) -> None:
        self.ticks_before_write = len(self.ticks)
        self.batches.append((rows, events))


def request_record(user: str, events: int) -> bytes:
    """One collector record: a request's events, all of one user."""
    return encode_events([
        Event(event_id=f"{user}-{i}", kind=EventKind.PAGE_VIEW, name="Page Viewed", user_key=user,
              event_time=T0 + timedelta(seconds=i), received_at=T0 + timedelta(seconds=i))
        for i in range(events)])


def test_a_batch_of_few_users_with_many_events_yields_while_decoding_and_folding():
    records = [(0, request_record(f"u{n}", 1000)) for n in range(4)]  # 4 users: yields by users would not come
    ticks: list = []
    writes = RecordedWrites(ticks)
    tracker = ProfileTracker(DictTable(), writes, dedupe_window=512, send_bad_row=None)

    async def process_beside_a_ticker() -> None:
        async def ticker():
            while True:
                ticks.append(1)
                await asyncio.sleep(0)

        beside = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        ticks.clear()
        await tracker.process(records)
        beside.cancel()

    asyncio.run(process_beside_a_ticker())
    # Before the write: each 1,000-event record decoded and each user's 1,000 events folded let the
    # ticker run at least once.
    assert writes.ticks_before_write >= 8
    [(rows, events)] = writes.batches
    assert len(events) == 4000
    assert sorted((r["user_key"], r["events"]) for r in rows) == [(f"u{n}", 1000) for n in range(4)]
    assert UserProfile.decode(tracker.table[b"u0"]).events == 1000
