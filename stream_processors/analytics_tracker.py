"""Behaviour analytics in the worker's batch: the shell around ``behaviour.py``.

Per batch, inside ``ProfileTracker.process`` (so the effects stay: table update, then changelog
durable -> trigger messages acked beside one PostgreSQL transaction, then the ack):
- ``fold`` adds a user's new events to their behaviour state and advances the watermark of the
  user's partition (its latest event time);
- ``advance`` fires what is due at each partition's watermark minus the trigger lateness, for users
  who had no event in the batch, found through an in-memory timer index (rebuilt from the table's
  value headers after partitions are assigned);
- ``output`` is what the batch writes: session rows, retired session ids, ``user_activity`` rows
  and the triggers fired but not yet delivered;
- after the write, ``delivered`` lets the next batch drop those triggers from the users' state.
Time comes from event times. Optionally (``idle_advance_s``, for quiet hours in production), a
partition without events for that long has its watermark move on with the wall clock, driven by a
Faust timer calling ``ProfileTracker.fire_idle``; the clock is injected.
"""

import heapq
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from spoor.events import MONEY_LIMIT, Event
from spoor.stream_processors import worker_metrics
from spoor.stream_processors.activity import WINDOWS
from spoor.stream_processors.behaviour import AnalyticsRules, UserBehaviour, pack, read_header, unpack
from spoor.stream_processors.blocking import YieldEvery
from spoor.stream_processors.rocksdb_store import key_partition

MONEY_COLUMNS = ["monetary"] + [f"revenue_{window}" for window in WINDOWS]
YIELD_EVERY_USERS = 200  # users re-written between yields to the event loop
YIELD_EVERY_KEYS = 5000  # table values read between yields while rebuilding the timer index


@dataclass
class AnalyticsOutput:
    sessions: list = field(default_factory=list)
    retired_sessions: list = field(default_factory=list)
    activity: list = field(default_factory=list)
    triggers: list = field(default_factory=list)


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, timezone.utc)


def session_row(user_key: str, session) -> dict:
    entry = session.entry or [None, None, None]
    campaign = session.campaign or [None, None, None]
    return {
        "user_key": user_key, "session_id": session.session_id, "opened_at": _utc(session.opened_at),
        "client_session": session.client,
        "started_at": _utc(session.started_at), "ended_at": _utc(session.ended_at),
        "duration_s": round(session.ended_at - session.started_at, 3),
        "events": session.events, "page_views": session.page_views, "product_views": session.product_views,
        "cart_adds": session.cart_adds, "checkouts": session.checkouts, "purchases": session.purchases,
        "revenue": session.revenue, "reached_cart": session.cart_adds > 0,
        "reached_checkout": session.checkouts > 0, "reached_purchase": session.purchases > 0,
        "entry_page": entry[1], "referrer": entry[2], "utm_source": campaign[1], "utm_campaign": campaign[2],
        "utm_medium": campaign[3] if len(campaign) > 3 else None,  # a state stored before 0023 has none
        "view_categories": session.view_categories, "cart_categories": session.cart_categories,
        "purchase_categories": session.purchase_categories,
        **session.journey.summary(),  # the journey's columns (migration 0033)
    }


class AnalyticsTracker:
    def __init__(self, rules: AnalyticsRules, partitions: int,
                 send_triggers: Callable[[list[dict]], Awaitable[None]],
                 idle_advance_s: float = 0.0, clock: Callable[[], float] = time.time):
        self.rules = rules
        self.partitions = partitions
        self.send_triggers = send_triggers
        self.idle_advance_s = idle_advance_s  # 0: event time alone moves the watermarks
        self.clock = clock  # wall clock, read only when idle_advance_s > 0
        self.watermarks: dict[int, float] = {}  # partition -> latest event time seen
        self.moved_at: dict[int, float] = {}  # partition -> wall time its watermark last moved
        self.timers: dict[int, list] = {}  # partition -> heap of (due at, user key)
        self.scheduled: dict[str, float] = {}  # user key -> earliest due time in the heap
        self.index_stale = True
        self.generation = 0  # counts resets, so a rebuild that yielded can tell one happened
        self.pause = YieldEvery(YIELD_EVERY_USERS)
        self.redeliver: set[str] = set()  # users whose undelivered triggers a restart found
        self.delivered: dict[str, set] = {}  # user key -> trigger ids the last batch delivered
        self.output = AnalyticsOutput()

    def reset(self) -> None:
        """Partitions were assigned or revoked: rebuild the timer index from the table."""
        self.index_stale = True
        self.generation += 1
        self.watermarks.clear()
        self.moved_at.clear()

    def mark(self, user_key: str) -> tuple:
        """Where the collected output stands before a user's fold, to ``rollback`` to if it fails."""
        out = self.output
        return (user_key, self.delivered.get(user_key), len(out.sessions), len(out.retired_sessions),
                len(out.activity), len(out.triggers))

    def money_out_of_range(self, mark: tuple) -> str | None:
        """The first money column of the rows collected since ``mark`` that its column cannot hold."""
        _user, _delivered, sessions, _retired, activity, _triggers = mark
        for row in self.output.sessions[sessions:]:
            if abs(Decimal(row["revenue"])) >= MONEY_LIMIT:
                return "sessions.revenue"
        for row in self.output.activity[activity:]:
            for column in MONEY_COLUMNS:
                if abs(row[column]) >= MONEY_LIMIT:
                    return f"user_activity.{column}"
        return None

    def rollback(self, mark: tuple) -> None:
        """Forget what a failed fold collected (its state is not stored)."""
        user_key, delivered, sessions, retired, activity, triggers = mark
        if delivered is not None:
            self.delivered[user_key] = delivered
        out = self.output
        del out.sessions[sessions:], out.retired_sessions[retired:], out.activity[activity:], out.triggers[triggers:]

    def fold(self, user_key: str, profile_json: bytes, behaviour_json: bytes | None,
             new_events: list[Event], all_events: list[Event]) -> bytes:
        """The user's next table value, after their new events; collects the rows to write."""
        behaviour = UserBehaviour.decode(behaviour_json) if behaviour_json else UserBehaviour()
        self._forget_delivered(user_key, behaviour)
        for event in new_events:
            behaviour.apply(user_key, event, self.rules)
        if behaviour.too_late_for_session:
            worker_metrics.SESSION_TOO_LATE.inc(behaviour.too_late_for_session)
            behaviour.too_late_for_session = 0
        partition = key_partition(user_key.encode(), self.partitions)
        latest = max(e.event_time.timestamp() for e in all_events)
        if latest > self.watermarks.get(partition, float("-inf")):
            self.watermarks[partition] = latest
            if self.idle_advance_s:
                self.moved_at[partition] = self.clock()
        # A redelivery: the stored state may be ahead of PostgreSQL, so rewrite all its sessions.
        return self._finish(user_key, profile_json, behaviour, partition,
                            rewrite_sessions=len(new_events) < len(all_events))

    def absorb(self, user_key: str, profile_json: bytes, behaviour_json: bytes | None,
               other_json: bytes | None) -> bytes:
        """The user's next table value with another id's behaviour folded in (identities.py, step 3);
        every session of the merged state is written again."""
        behaviour = UserBehaviour.decode(behaviour_json) if behaviour_json else UserBehaviour()
        self._forget_delivered(user_key, behaviour)
        if other_json is not None:
            behaviour.absorb(UserBehaviour.decode(other_json), user_key, self.rules)
        if behaviour.too_late_for_session:
            worker_metrics.SESSION_TOO_LATE.inc(behaviour.too_late_for_session)
            behaviour.too_late_for_session = 0
        return self._finish(user_key, profile_json, behaviour, key_partition(user_key.encode(), self.partitions),
                            rewrite_sessions=True)

    def _finish(self, user_key: str, profile_json: bytes, behaviour: UserBehaviour, partition: int,
                rewrite_sessions: bool = False) -> bytes:
        due_at = behaviour.due_at(self.rules)
        if due_at is not None and due_at < self.scheduled.get(user_key, float("inf")):
            self.scheduled[user_key] = due_at
            heapq.heappush(self.timers.setdefault(partition, []), (due_at, user_key))
        self._collect(user_key, behaviour, rewrite_sessions)
        return pack(profile_json, behaviour, due_at)

    def _collect(self, user_key: str, behaviour: UserBehaviour, rewrite_sessions: bool) -> None:
        out = self.output
        # "after": how many session rows came before the retirement; a row collected earlier in the
        # batch for a session retired since (a merge moved its start) is not written (take_output).
        out.retired_sessions += [{"user_key": user_key, "session_id": sid, "after": len(out.sessions)}
                                 for sid in behaviour.sessions.retired_ids]
        out.sessions += [session_row(user_key, s) for s in behaviour.sessions.to_write(rewrite_sessions)]
        if behaviour.activity.last_seen is not None:
            out.activity.append(behaviour.activity.row(user_key))
        out.triggers += behaviour.pending

    def forget(self, user_key: str) -> None:
        """The user was erased: nothing of theirs is due or waiting for delivery any more."""
        self.scheduled.pop(user_key, None)  # a heap entry without its schedule is skipped
        self.delivered.pop(user_key, None)
        self.redeliver.discard(user_key)

    def _forget_delivered(self, user_key: str, behaviour: UserBehaviour) -> None:
        done = self.delivered.pop(user_key, None)
        if done:
            behaviour.pending = [t for t in behaviour.pending if t["trigger_id"] not in done]

    async def advance(self, table, batch_users: set[str]) -> None:
        """Fire what is due at the watermarks, for users without an event in this batch.

        A catch-up (downtime, a burst of event time) can fire for tens of thousands of users: it
        yields to the event loop every ``YIELD_EVERY_USERS`` so heartbeats and /metrics still run."""
        started = time.perf_counter()
        if self.index_stale:
            await self._rebuild_index(table)
        for user_key in [u for u in self.delivered if u not in batch_users]:  # delivered last batch
            await self._update(table, user_key, None)
        for user_key in self.redeliver - batch_users:
            await self._update(table, user_key, None)
        self.redeliver.clear()
        now = self.clock() if self.idle_advance_s else None
        for partition, heap in self.timers.items():
            watermark = self._watermark(partition, now)
            while heap and watermark is not None and heap[0][0] <= watermark:
                due_at, user_key = heapq.heappop(heap)
                if self.scheduled.get(user_key) != due_at:
                    continue  # superseded by an earlier entry
                del self.scheduled[user_key]
                await self._update(table, user_key, watermark - self.rules.trigger_lateness_s)
        worker_metrics.ADVANCE_SECONDS.observe(time.perf_counter() - started)

    def _watermark(self, partition: int, now: float | None) -> float | None:
        """The partition's latest event time; with idle advance, plus the wall time it has been idle."""
        watermark = self.watermarks.get(partition)
        if watermark is None or now is None:
            return watermark
        idle = now - self.moved_at[partition]
        return watermark + idle if idle >= self.idle_advance_s else watermark

    async def _update(self, table, user_key: str, now: float | None) -> None:
        """Re-write one user's value, firing what is due at ``now`` (None: nothing new)."""
        await self.pause.after()
        key = user_key.encode()
        stored = table.get(key)
        if stored is None:
            return
        profile_json, behaviour_json = unpack(stored)
        if behaviour_json is None:
            return
        behaviour = UserBehaviour.decode(behaviour_json)
        self._forget_delivered(user_key, behaviour)
        if now is not None:
            behaviour.fire_due(user_key, now, self.rules)
        self.scheduled.pop(user_key, None)
        table[key] = self._finish(user_key, profile_json, behaviour, key_partition(key, self.partitions))

    async def _rebuild_index(self, table) -> None:
        """The timer index from the value headers of every user the worker holds.

        It yields while reading. A rebalance in the meantime (``reset``) makes the table's set of
        partitions change under the iterator: stop, and leave the index stale for the next batch."""
        generation = self.generation
        self.timers.clear()
        self.scheduled.clear()
        self.index_stale = False
        reading = YieldEvery(YIELD_EVERY_KEYS)
        for key, value in table.items():
            if await reading.after() and self.generation != generation:
                return
            due_at, pending = read_header(value)
            user_key = key.decode()
            if due_at is not None:
                self.scheduled[user_key] = due_at
                heapq.heappush(self.timers.setdefault(key_partition(key, self.partitions), []), (due_at, user_key))
            if pending:
                self.redeliver.add(user_key)
        worker_metrics.TIMER_INDEX_REBUILDS.inc()

    def take_output(self) -> AnalyticsOutput:
        out, self.output = self.output, AnalyticsOutput()
        retired_at: dict[tuple, int] = {}
        for r in out.retired_sessions:
            key = (r.pop("user_key"), r.pop("session_id"))
            retired_at[key] = max(retired_at.get(key, 0), r.pop("after", 0))
        out.retired_sessions = [{"user_key": user, "session_id": sid} for user, sid in retired_at]
        # A user touched twice in a batch (event, then a timer, or a merge) appears twice: keep the last
        # rows, and none of a session retired after its row was collected.
        out.sessions = list({(r["user_key"], r["session_id"]): r for i, r in enumerate(out.sessions)
                             if i >= retired_at.get((r["user_key"], r["session_id"]), 0)}.values())
        out.activity = list({r["user_key"]: r for r in out.activity}.values())
        out.triggers = list({t["trigger_id"]: t for t in out.triggers}.values())
        live = {(r["user_key"], r["session_id"]) for r in out.sessions}
        out.retired_sessions = [r for r in {(r["user_key"], r["session_id"]): r for r in out.retired_sessions}.values()
                                if (r["user_key"], r["session_id"]) not in live]
        return out

    async def deliver(self, out: AnalyticsOutput) -> None:
        """Send the batch's triggers to Kafka and wait for the acks (before the batch is acked)."""
        if out.triggers:
            await self.send_triggers(out.triggers)

    def delivered_ok(self, out: AnalyticsOutput) -> None:
        """The batch is written: its triggers can leave the users' state (in the next batch)."""
        for trigger in out.triggers:
            self.delivered.setdefault(trigger["user_key"], set()).add(trigger["trigger_id"])
        worker_metrics.TRIGGERS.inc(len(out.triggers))
