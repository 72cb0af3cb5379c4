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

An erasure record (``spoor users erase``, privacy/erasure.py) drops the user's
state, and their rows go in the batch's transaction; the user's events before
it in the batch are left out, later ones start a new profile. Redelivered, it
does the same again.

Consent (consent_gate.py) is the first step for each event, once it is known whose it is: an event
without analytics consent is withheld from everything below and counted in the metric windows only.

Identity records join a user's ids into one profile (identities.py): the batch's
link, merge and forwarded-event records go out after step 2, acked before step 3,
and an id whose state was shipped in a merge is dropped only after that.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from functools import partial

import orjson
from pydantic import ValidationError

from spoor.bad_rows import PARSE_ERROR, PROCESSING_ERROR, SCHEMA_VIOLATION, SIZE_VIOLATION, InvalidRecord, describe
from spoor.events import (
    EARLIEST_EVENT_TIME,
    IDENTITY_LINK,
    MONEY_LIMIT,
    Event,
    decode_record,
    encode_events,
    erased_user,
    identity_link_record,
    identity_merge_record,
    identity_record,
)
from spoor.storage.writers import StreamWriter
from spoor.stream_processors import WorkerError, worker_metrics
from spoor.stream_processors.analytics_tracker import AnalyticsOutput, AnalyticsTracker
from spoor.stream_processors.behaviour import unpack
from spoor.stream_processors.blocking import YieldEvery, run_blocking
from spoor.stream_processors.consent_gate import ConsentGate
from spoor.stream_processors.fault_points import crash_point
from spoor.stream_processors.identities import LINKED, MERGED, IdentityGraph, Link
from spoor.stream_processors.interests import RecentActivity, recent_activity
from spoor.stream_processors.profile import UserProfile
from spoor.stream_processors.rocksdb_store import purge_erased

log = logging.getLogger(__name__)
FUTURE_TIME = "future_time"

# A batch can hold tens of thousands of events (a record holds a request's events): decoding and
# folding yield to the event loop after about this many, so heartbeats and /metrics still run.
# Nothing is acked before process() returns.
YIELD_EVERY_EVENTS = 500


def _once_each(events: list[tuple[int, Event]]) -> list[tuple[int, Event]]:
    """Withheld events for the metric windows, a repeated id once (they have no profile to dedupe them)."""
    return list({event.event_id: (partition, event) for partition, event in events}.values())


class TooManyProcessingErrors(WorkerError, RuntimeError):
    """A run of records that all raised: a bad deploy, not bad data. The worker fail-stops.
    Keeps its RuntimeError base beside WorkerError (nothing catches it as one; kept so nothing else changes)."""


class ProcessingErrorLimit:
    """One record that makes a step raise is a bad row; ``limit`` of them in a row stop the worker
    (as arroyo's DlqLimit), so a broken release cannot turn the whole stream into dead letters."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_a_row = 0

    def failed(self) -> None:
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise TooManyProcessingErrors(f"{self.in_a_row} records in a row failed to process")

    def succeeded(self) -> None:
        self.in_a_row = 0


Record = tuple[int, bytes] | tuple[int, bytes, float | None]  # partition, value[, Kafka timestamp in s]


class ProfileTracker:
    def __init__(self, table, writer: StreamWriter, dedupe_window: int,
                 send_bad_row: Callable[..., Awaitable], analytics: AnalyticsTracker | None = None, *,
                 max_future_s: float = 300.0, max_state_bytes: int = 900_000,
                 max_processing_errors_in_a_row: int = 200, identities: IdentityGraph | None = None,
                 send_record: Callable[[str, bytes], Awaitable] | None = None,
                 interests: Callable[[list[Event]], dict] | None = None, consent: ConsentGate | None = None):
        self.table = table  # Faust table: user key (bytes) -> encoded UserProfile (+ behaviour)
        self.writer = writer
        self.dedupe_window = dedupe_window
        self.send_bad_row = send_bad_row
        self.analytics = analytics
        self.max_future_s = max_future_s
        self.max_state_bytes = max_state_bytes
        self.errors = ProcessingErrorLimit(max_processing_errors_in_a_row)
        self.bad_row_deliveries: list = []  # Kafka acks of this batch's bad rows, awaited before its write
        self.pause = YieldEvery(YIELD_EVERY_EVENTS)
        self.identities = identities  # None: every key is a profile of its own
        self.send_record = send_record  # (key, value) -> the delivery of a record on the events topic
        self.interests = interests  # events -> their interest rows (stream_processors/interests.py)
        self.recent: dict[str, RecentActivity] = {}  # the batch's users before it, for the interest rows
        self.consent = consent  # None: every event is profiled (consent_gate.py)

    async def process(self, records: Sequence[Record]) -> list[tuple[int, Event]]:
        """Fold (partition, record value[, record timestamp]) tuples; returns the events seen for the
        first time (by id, within the user's dedupe window) with their partition, so a client's retry
        is counted once downstream (metric windows) as it is in the profiles.

        One boundary per user: a user's events that make the fold raise are folded again one by one,
        and each event that still raises is dead-lettered (its failure is data); the rest go on."""
        if not records:
            return []
        self.recent = {}
        decoded, erasures, identity_records = await self._decode(records)
        claims, refusals = self._claim(identity_records) if self.identities else ({}, [])
        kept, forwarded, erased_events, targets = [], [], 0, {}
        for index, (partition, event) in enumerate(decoded):
            if index < erasures.get(event.user_key, 0):  # goes with the rest of the erased user's data
                erased_events += 1
            elif self.identities and (target := self._target(event.user_key, index, claims, targets)):
                forwarded.append(event.model_copy(update={"user_key": target}))
            else:
                kept.append((partition, event))
        withheld, statements = [], {}
        if self.consent:  # the first step of profiling, for each event as the person it belongs to
            await self.consent.refresh()
            kept, withheld, statements = await self.consent.gate(kept)
        decoded = kept
        by_user: dict[str, list[Event]] = {}
        for _partition, event in decoded:
            by_user.setdefault(event.user_key, []).append(event)

        rows, first_seen, failed = {}, set(), set()  # ids (object identity) of the events applied / failed
        links = list(refusals)
        for user_key in erasures:
            self._forget(user_key)
        for user_key, user_events in by_user.items():
            await self.pause.after(len(user_events))
            key = user_key.encode()
            stored = self.table.get(key)
            mark = self.analytics.mark(user_key) if self.analytics else None
            try:
                value, profile, new_events = self._fold(user_key, stored, user_events, mark)
            except Exception:  # noqa: BLE001 - the pure fold of one user's events: isolate the event
                if self.analytics:
                    self.analytics.rollback(mark)
                value, profile, new_events = await self._fold_one_by_one(user_key, stored, user_events, failed)
            else:
                self.errors.succeeded()
            if value is not None:
                self.table[key] = value
                rows[user_key] = profile.row()
            first_seen.update(map(id, new_events))
            if self.identities and user_key not in erasures:
                links += self.identities.discover(user_key, user_events)
        passed_on: list[dict] = []  # merge records for users joined to another since
        merges = await self._merge(identity_records, rows, links, passed_on) if self.identities else []
        if failed:
            decoded = [(p, e) for p, e in decoded if id(e) not in failed]
        events = [event for _partition, event in decoded]
        derived = None
        if self.analytics:
            await self.analytics.advance(self.table, set(by_user))
            derived = self.analytics.take_output()

        await self._bad_rows_acknowledged()
        if self.identities:  # before the write that makes the new links durable: see _send_links
            await self._send_links(links)
        if statements:
            await self.consent.record(statements)
        await self._persist(list(rows.values()), events, derived, sorted(erasures), merges, links)
        if erasures:  # the erased keys' old values and delete markers leave the local RocksDB files too
            await purge_erased((self.table, self.identities.table if self.identities else None), erasures)
        if self.identities:
            await self._send_identity_records(claims, forwarded, passed_on, refusals)
        worker_metrics.BATCH_EVENTS.observe(len(events))
        worker_metrics.EVENTS.labels("applied").inc(len(first_seen))
        worker_metrics.EVENTS.labels("duplicate").inc(len(events) - len(first_seen))
        worker_metrics.EVENTS.labels("erased").inc(erased_events)
        worker_metrics.EVENTS.labels("forwarded").inc(len(forwarded))
        worker_metrics.EVENTS.labels("withheld").inc(len(withheld))
        now = datetime.now(timezone.utc)
        for event in events:
            worker_metrics.FRESHNESS_SECONDS.observe((now - event.received_at).total_seconds())
        counted = [(partition, event) for partition, event in decoded if id(event) in first_seen]
        return counted + _once_each(withheld) if withheld else counted

    def _fold(self, user_key: str, stored: bytes | None, events: list[Event],
              mark: tuple | None) -> tuple[bytes, UserProfile, list]:
        """The user's next table value after ``events``, their profile, and the events new to them.
        Raises when the result cannot be stored (``mark``: the analytics output before the fold)."""
        profile_json, behaviour_json = unpack(stored) if stored else (None, None)
        profile = UserProfile.decode(profile_json) if profile_json else UserProfile(user_key)
        if self.interests:
            self.recent[user_key] = recent_activity(profile)
        new_events = [event for event in events if profile.apply(event, self.dedupe_window)]
        if self.analytics:
            value = self.analytics.fold(user_key, profile.encode(), behaviour_json, new_events, events)
        else:
            value = profile.encode()
        column = next((name for name in ("revenue", "cart_value") if abs(getattr(profile, name)) >= MONEY_LIMIT),
                      None) or (self.analytics.money_out_of_range(mark) if self.analytics else None)
        if column:
            raise InvalidRecord("$", f"{column} would leave the range of its NUMERIC(18,4) column", SIZE_VIOLATION)
        if len(value) > self.max_state_bytes:
            raise InvalidRecord("$", f"the user's state would grow to {len(value)} bytes, over "
                                     f"{self.max_state_bytes} (SPOOR_WORKER_MAX_STATE_BYTES)", SIZE_VIOLATION)
        return value, profile, new_events

    def _claim(self, identity_records: list) -> tuple[dict[str, tuple[int, Link]], list[Link]]:
        """The links of the batch, read on the linked id's partition: (where each id was claimed, its
        link) and the refused links (each user is told, after the write). An id's first link in the
        batch is the one that counts."""
        claims, refused = {}, []
        for index, kind, fields in identity_records:
            if kind != IDENTITY_LINK or fields["id"] in claims:
                continue
            linked_id = fields["id"]
            stored = self.table.get(linked_id.encode())
            identified = stored is not None and orjson.loads(unpack(stored)[0]).get("user_id") is not None
            claimed_before = self.identities.target(linked_id) == fields["user_key"]
            link = self.identities.claim(linked_id, fields["user_key"], fields["kind"], identified)
            worker_metrics.IDENTITY_LINKS.labels("claimed" if link.status == MERGED else "refused").inc()
            if link.status == MERGED:
                # A link sent again for an id claimed before: every event of the id in the batch goes on.
                claims[linked_id] = (0 if claimed_before else index, link)
            else:
                log.info("link of %r to %r refused: %s", linked_id[:64], link.user_key[:64], link.reason)
                refused.append(link)
        return claims, refused

    def _target(self, key: str, index: int, claims: dict, targets: dict) -> str | None:
        """Where an event of ``key`` at ``index`` in the batch goes: its user's key when ``key`` was
        joined to one (by this batch's link only for the events after it), else None (it stays)."""
        claim = claims.get(key)
        if claim is not None:
            claimed_at, link = claim
            return link.user_key if index >= claimed_at else None
        if key not in targets:
            targets[key] = self.identities.target(key)
        return targets[key]

    async def _merge(self, identity_records: list, rows: dict, links: list,
                     passed_on: list) -> list[tuple[str, str]]:
        """Fold each merge record's state into its user's, once; (from, into) of those folded. A merge
        for a user who was joined to another since goes on to that one (``passed_on``), as events do."""
        merges = []
        for _index, kind, fields in identity_records:
            if kind == IDENTITY_LINK:
                continue
            from_key, user_key = fields["from"], fields["into"]
            if fields.get("refused") is not None:  # the id's partition said no: stop asking it
                self.identities.refused_by_id(user_key, from_key)
                continue
            target = self.identities.target(user_key)
            if target is not None:
                passed_on.append({**fields, "into": target})
                continue
            if self.identities.absorbed(user_key, from_key):
                worker_metrics.IDENTITY_MERGES.labels("duplicate").inc()
                continue
            key = user_key.encode()
            try:
                value, profile = self._absorb(user_key, self.table.get(key), fields["state"])
            except Exception as err:  # noqa: BLE001 - this record's failure is data
                summary = {"identity_merge": {**fields, "state": f"<{len(fields['state'] or '')} characters>"}}
                await self._reject(summary, "identity_merge.state", describe(err), PROCESSING_ERROR)
                continue
            if value is not None:
                self.table[key] = value
                rows[user_key] = profile.row()
            self.identities.mark_merged(user_key, from_key, fields["ids"])
            merges.append((from_key, user_key))
            links.append(Link(user_key, from_key, fields["kind"], MERGED))
            worker_metrics.IDENTITY_MERGES.labels("merged").inc()
        return merges

    def _absorb(self, user_key: str, stored: bytes | None, other_state: str | None) -> tuple[bytes | None, UserProfile | None]:
        """The user's table value with another id's state folded in (identities.py, step 3)."""
        if other_state is None and stored is None:
            return None, None
        profile_json, behaviour_json = unpack(stored) if stored else (None, None)
        profile = UserProfile.decode(profile_json) if profile_json else UserProfile(user_key)
        other_behaviour = None
        if other_state is not None:
            other_profile_json, other_behaviour = unpack(other_state.encode())
            profile.absorb(UserProfile.decode(other_profile_json), self.dedupe_window)
        if self.analytics:
            value = self.analytics.absorb(user_key, profile.encode(), behaviour_json, other_behaviour)
        else:
            value = profile.encode()
        if len(value) > self.max_state_bytes:
            raise InvalidRecord("$", f"the merged state would grow to {len(value)} bytes, over "
                                     f"{self.max_state_bytes} (SPOOR_WORKER_MAX_STATE_BYTES)", SIZE_VIOLATION)
        return value, profile

    async def _send_links(self, links: list[Link]) -> None:
        """Link records for the ids this batch joined, acked before the batch is written: once the user's
        entry says "linked" durably, a redelivered batch finds nothing new to send (a crash between the
        write and a send after it lost the link). A link sent twice is claimed once."""
        deliveries = [await self.send_record(link.linked_id, identity_link_record(link.linked_id, link.user_key,
                                                                                  link.kind))
                      for link in links if link.status == LINKED]
        if deliveries:
            await asyncio.gather(*deliveries)

    async def _send_identity_records(self, claims: dict, forwarded: list[Event], passed_on: list[dict],
                                     refusals: list[Link]) -> None:
        """After the batch's write (so the claims they carry out are durable, and a redelivered batch
        sends them again): the claimed ids' states to their users' partitions, merges passed on, then
        the events forwarded there (so a user's partition reads a merge before the events that follow
        it); then, acked, the claimed ids' states go."""
        deliveries = [await self.send_record(link.user_key, identity_merge_record(
            link.linked_id, link.user_key, link.kind, None, {}, refused=link.reason)) for link in refusals]
        for linked_id, (_index, link) in claims.items():
            state = self.table.get(linked_id.encode())
            deliveries.append(await self.send_record(link.user_key, identity_merge_record(
                linked_id, link.user_key, link.kind, state, self.identities.carried_ids(linked_id))))
        for fields in passed_on:
            state = None if fields["state"] is None else fields["state"].encode()
            deliveries.append(await self.send_record(fields["into"], identity_merge_record(
                fields["from"], fields["into"], fields["kind"], state, fields["ids"])))
        by_user: dict[str, list[Event]] = {}
        for event in forwarded:
            by_user.setdefault(event.user_key, []).append(event)
        for user_key, events in by_user.items():
            deliveries.append(await self.send_record(user_key, encode_events(events)))
        if deliveries:
            await asyncio.gather(*deliveries)
        dropped = False
        for linked_id in claims:
            if self.table.get(linked_id.encode()) is not None:
                del self.table[linked_id.encode()]
                dropped = True
            if self.analytics:
                self.analytics.forget(linked_id)
        if dropped:
            await self.table.changelog_durable()

    async def _fold_one_by_one(self, user_key: str, stored: bytes | None, events: list[Event],
                               failed: set) -> tuple[bytes | None, UserProfile | None, list]:
        value, profile, new_events = None, None, []
        for event in events:
            mark = self.analytics.mark(user_key) if self.analytics else None
            try:
                value_now, profile_now, new_now = self._fold(user_key, stored, [event], mark)
            except TooManyProcessingErrors:
                raise
            except Exception as err:  # noqa: BLE001 - this one event's failure is data
                if self.analytics:
                    self.analytics.rollback(mark)
                failed.add(id(event))
                await self._reject_event(event, err)
                continue
            self.errors.succeeded()
            stored = value = value_now
            profile = profile_now
            new_events += new_now
        return value, profile, new_events

    async def _reject_event(self, event: Event, err: Exception) -> None:
        if isinstance(err, InvalidRecord):
            field, reason, failure_type = err.field, err.reason, err.failure_type
        else:
            field, reason, failure_type = "$", describe(err), PROCESSING_ERROR
            log.error("an event of user %r failed to fold: %s", event.user_key[:64], reason)
            self.errors.failed()
        await self._reject(orjson.loads(event.to_json()), field, reason, failure_type)

    async def fire_idle(self) -> None:
        """Fire what fell due on partitions idle for ``idle_advance_s`` (called by a Faust timer)."""
        if not self.analytics.watermarks:
            return  # no event since the last assignment: nothing to measure idleness from
        await self.analytics.advance(self.table, set())
        derived = self.analytics.take_output()
        if derived.activity or derived.triggers or derived.sessions:
            await self._persist([], [], derived)

    async def _persist(self, rows: list[dict], events: list[Event], derived: AnalyticsOutput | None,
                       erased: Sequence[str] = (), merges: Sequence[tuple[str, str]] = (),
                       links: Sequence[Link] = ()) -> None:
        """Steps 1 and 2 of the module docstring, side by side: the changelog and trigger acks
        take as long as a PostgreSQL write, and neither needs the other's result."""
        async def changelog_then_triggers() -> None:
            await self.table.changelog_durable()
            if self.identities:
                await self.identities.table.changelog_durable()
            if derived:
                await self.analytics.deliver(derived)

        async def write() -> None:
            started = time.perf_counter()
            options = {"interests": self.interests(events, recent=self.recent)} if self.interests and events else {}
            if merges or links:  # the merged users' rows move in this transaction (storage/identities.py)
                now = datetime.now(timezone.utc)
                options.update(merges=list(merges), links=[link.row(now) for link in links])
            await run_blocking(partial(self.writer.write_batch, **options), rows, events, derived, erased)
            worker_metrics.WRITE_SECONDS.observe(time.perf_counter() - started)

        await asyncio.gather(changelog_then_triggers(), write())
        crash_point("after_persist")
        if derived:
            self.analytics.delivered_ok(derived)

    async def _decode(self, records: Sequence[Record]) -> tuple[list[tuple[int, Event]], dict[str, int], list]:
        """(partition, event) of the batch's records; where each erased user's last erasure record
        came (its index in that list); and the identity records, (index, kind, fields) in order. An
        invalid record or event is dead-lettered, never dropped."""
        events, erasures, identity_records = [], {}, []
        for record in records:
            partition, raw = record[0], record[1]
            try:
                valid = decode_record(raw)
            except ValidationError:
                erased = erased_user(raw)
                if erased is not None:
                    erasures[erased] = len(events)
                    continue
                try:
                    identity = identity_record(raw)
                except InvalidRecord as err:
                    await self._reject(raw, err.field, err.reason, err.failure_type)
                    continue
                if identity is not None:
                    identity_records.append((len(events), *identity))
                    continue
                valid = await self._salvage(raw)
            except InvalidRecord as err:
                await self._reject(raw, err.field, err.reason, err.failure_type)
                continue
            except Exception as err:  # noqa: BLE001 - one record's failure is data
                await self._reject(raw, "$", describe(err), PROCESSING_ERROR)
                continue
            appended_at = record[2] if len(record) > 2 else None
            if appended_at is not None:
                impossible = [(event, self._impossible_time(event, appended_at)) for event in valid]
                for event, field in impossible:
                    if field:
                        await self._reject(orjson.loads(event.to_json()), field,
                                           f"{getattr(event, field).isoformat()} is outside {EARLIEST_EVENT_TIME:%Y} .. "
                                           f"the record's arrival in Kafka plus {self.max_future_s:.0f} s "
                                           "(SPOOR_MAX_FUTURE_EVENT_S)", FUTURE_TIME)
                valid = [event for event, field in impossible if field is None]
            events.extend((partition, event) for event in valid)
            await self.pause.after(len(valid))
        return events, erasures, identity_records

    def _impossible_time(self, event: Event, appended_at: float) -> str | None:
        """The first of the event's times that a record which reached Kafka at ``appended_at`` cannot
        hold, else None: a claimed future time would move the partition's watermark and fire everyone's
        triggers. Checked per event without a coroutine; only a rejection awaits."""
        latest = appended_at + self.max_future_s
        for name in ("event_time", "received_at"):
            at = getattr(event, name)
            if at.timestamp() > latest or at < EARLIEST_EVENT_TIME:
                return name
        return None

    async def _bad_rows_acknowledged(self) -> None:
        deliveries, self.bad_row_deliveries = self.bad_row_deliveries, []
        if deliveries:
            await asyncio.gather(*deliveries)

    def _forget(self, user_key: str) -> None:
        """An erasure record: the user's state goes (a changelog tombstone), as do their pending triggers."""
        key = user_key.encode()
        if self.table.get(key) is not None:
            del self.table[key]
        if self.analytics:
            self.analytics.forget(user_key)
        if self.identities:
            self.identities.forget(user_key)
        worker_metrics.ERASURES.inc()

    async def _salvage(self, raw: bytes) -> list[Event]:
        """Keep the valid events of a record that failed validation; dead-letter the rest one by one."""
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            await self._reject(raw, "$", f"not JSON: {err}", PARSE_ERROR)
            return []
        good = []
        for item in items if isinstance(items, list) else [items]:
            try:
                good.append(Event.model_validate(item))
            except ValidationError as err:
                first = err.errors()[0]
                await self._reject(item, ".".join(str(p) for p in first["loc"]) or "$", first["msg"])
            except Exception as err:  # noqa: BLE001 - e.g. nesting too deep for the validator
                await self._reject(item, "$", describe(err), PROCESSING_ERROR)
        return good

    async def _reject(self, payload, field: str, reason: str, failure_type: str = SCHEMA_VIOLATION) -> None:
        """Dead-letter one record or event (``payload``: its bytes or decoded JSON). ``send_bad_row``
        may return the send's delivery: all of a batch's are awaited together, before its write (one
        at a time, 1,900 hostile records cost ~10 ms each and held a canary back for 11 s)."""
        delivery = await self.send_bad_row(payload, field, reason, failure_type)
        if delivery is not None:
            self.bad_row_deliveries.append(delivery)
        worker_metrics.EVENTS.labels("invalid").inc()
        worker_metrics.BAD_RECORDS.labels(failure_type).inc()
