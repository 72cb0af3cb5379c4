"""Folds a batch of events into per-user state in a Faust table, then persists it.

Effects of one batch, which is what makes a crash at any point safe:
1. the table updates, awaited until the broker acknowledged their changelog
   records (then the batch's trigger messages, also acked by Kafka);
2. at the same time, events and profile snapshots written to PostgreSQL in one
   transaction;
3. only when both are done does the agent return, so Faust acks the batch and
   may commit.
A crash before 3 redelivers the batch, whichever of 1 and 2 finished. The fold
is deterministic, so a table restored without the batch's changelog derives
the same snapshots again. A redelivered event already in the user's state (a
local RocksDB store keeps writes whose changelog record the crash lost) is
recognised by its id and changes nothing; the user's current snapshot and
table value are still re-written (idempotently), and still-pending triggers
are sent again (analytics_tracker.py). Snapshots never go backwards in
PostgreSQL (writers.py), and trigger ids are deterministic.

An erasure record (``spoor users erase``, segments/erase.py) drops the user's
state, and their rows go in the batch's transaction; the user's events before
it in the batch are left out, later ones start a new profile. Redelivered, it
does the same again.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone

import orjson
from pydantic import ValidationError

from spoor.events import Event, decode_record, erased_user
from storage.writers import StreamWriter
from stream_processors import metrics
from stream_processors.analytics_tracker import AnalyticsOutput, AnalyticsTracker
from stream_processors.behaviour import unpack
from stream_processors.blocking import YieldEvery, run_blocking
from stream_processors.fault_points import crash_point
from stream_processors.profile import UserProfile


# A batch can hold tens of thousands of events (a record holds a request's events): decoding and
# folding yield to the event loop after about this many, so heartbeats and /metrics still run.
# Nothing is acked before process() returns.
YIELD_EVERY_EVENTS = 500


class ProfileTracker:
    def __init__(self, table, writer: StreamWriter, dedupe_window: int,
                 send_bad_row: Callable[[bytes, str, str], Awaitable], analytics: AnalyticsTracker | None = None):
        self.table = table  # Faust table: user key (bytes) -> encoded UserProfile (+ behaviour)
        self.writer = writer
        self.dedupe_window = dedupe_window
        self.send_bad_row = send_bad_row
        self.analytics = analytics
        self.pause = YieldEvery(YIELD_EVERY_EVENTS)

    async def process(self, records: Sequence[tuple[int, bytes]]) -> list[tuple[int, Event]]:
        """Fold (partition, record value) pairs; returns the events seen for the first time (by id,
        within the user's dedupe window) with their partition, so a client's retry is counted once
        downstream (metric windows) as it is in the profiles."""
        if not records:
            return []
        decoded, erasures = await self._decode(records)
        erased_events = 0
        if erasures:  # a user's events before their erasure record go with the rest of their data
            kept = [(p, e) for i, (p, e) in enumerate(decoded) if i >= erasures.get(e.user_key, 0)]
            erased_events, decoded = len(decoded) - len(kept), kept
        events = [event for _partition, event in decoded]
        by_user: dict[str, list[Event]] = {}
        for event in events:
            by_user.setdefault(event.user_key, []).append(event)

        rows, first_seen = [], set()  # ids (object identity) of the events applied now
        for user_key in erasures:
            self._forget(user_key)
        for user_key, user_events in by_user.items():
            await self.pause.after(len(user_events))
            key = user_key.encode()
            stored = self.table.get(key)
            profile_json, behaviour_json = unpack(stored) if stored else (None, None)
            profile = UserProfile.decode(profile_json) if profile_json else UserProfile(user_key)
            new_events = [event for event in user_events if profile.apply(event, self.dedupe_window)]
            if self.analytics:
                self.table[key] = self.analytics.fold(user_key, profile.encode(), behaviour_json,
                                                      new_events, user_events)
            else:
                self.table[key] = profile.encode()
            first_seen.update(map(id, new_events))
            rows.append(profile.row())
        derived = None
        if self.analytics:
            await self.analytics.advance(self.table, set(by_user))
            derived = self.analytics.take_output()

        await self._persist(rows, events, derived, sorted(erasures))
        metrics.BATCH_EVENTS.observe(len(events))
        metrics.EVENTS.labels("applied").inc(len(first_seen))
        metrics.EVENTS.labels("duplicate").inc(len(events) - len(first_seen))
        metrics.EVENTS.labels("erased").inc(erased_events)
        now = datetime.now(timezone.utc)
        for event in events:
            metrics.FRESHNESS_SECONDS.observe((now - event.received_at).total_seconds())
        return [(partition, event) for partition, event in decoded if id(event) in first_seen]

    async def fire_idle(self) -> None:
        """Fire what fell due on partitions idle for ``idle_advance_s`` (called by a Faust timer)."""
        if not self.analytics.watermarks:
            return  # no event since the last assignment: nothing to measure idleness from
        await self.analytics.advance(self.table, set())
        derived = self.analytics.take_output()
        if derived.activity or derived.triggers or derived.sessions:
            await self._persist([], [], derived)

    async def _persist(self, rows: list[dict], events: list[Event], derived: AnalyticsOutput | None,
                       erased: Sequence[str] = ()) -> None:
        """Steps 1 and 2 of the module docstring, side by side: the changelog and trigger acks
        take as long as a PostgreSQL write, and neither needs the other's result."""
        async def changelog_then_triggers() -> None:
            await self.table.changelog_durable()
            if derived:
                await self.analytics.deliver(derived)

        async def write() -> None:
            started = time.perf_counter()
            await run_blocking(self.writer.write_batch, rows, events, derived, erased)
            metrics.WRITE_SECONDS.observe(time.perf_counter() - started)

        await asyncio.gather(changelog_then_triggers(), write())
        crash_point("after_persist")
        if derived:
            self.analytics.delivered_ok(derived)

    async def _decode(self, records: Sequence[tuple[int, bytes]]) -> tuple[list[tuple[int, Event]], dict[str, int]]:
        """(partition, event) of the batch's records, and where each erased user's last erasure record
        came (its index in that list); an invalid event is dead-lettered, never dropped."""
        events, erasures = [], {}
        for partition, raw in records:
            try:
                valid = decode_record(raw)
            except ValidationError:
                erased = erased_user(raw)
                if erased is not None:
                    erasures[erased] = len(events)
                    continue
                valid = await self._salvage(raw)
            events.extend((partition, event) for event in valid)
            await self.pause.after(len(valid))
        return events, erasures

    def _forget(self, user_key: str) -> None:
        """An erasure record: the user's state goes (a changelog tombstone), as do their pending triggers."""
        key = user_key.encode()
        if self.table.get(key) is not None:
            del self.table[key]
        if self.analytics:
            self.analytics.forget(user_key)
        metrics.ERASURES.inc()

    async def _salvage(self, raw: bytes) -> list[Event]:
        """Keep the valid events of a record that failed validation; dead-letter the rest one by one."""
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            await self._reject(raw, "$", f"not JSON: {err}")
            return []
        good = []
        for item in items if isinstance(items, list) else [items]:
            try:
                good.append(Event.model_validate(item))
            except ValidationError as err:
                first = err.errors()[0]
                await self._reject(orjson.dumps(item), ".".join(str(p) for p in first["loc"]) or "$", first["msg"])
        return good

    async def _reject(self, raw: bytes, field: str, reason: str) -> None:
        await self.send_bad_row(raw, field, reason)
        metrics.EVENTS.labels("invalid").inc()
