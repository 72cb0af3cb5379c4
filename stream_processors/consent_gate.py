"""The worker's first step: events without analytics consent are kept out of profiling.

``ConsentGate.gate`` splits a batch's events (after erasure and identity forwarding, so each is judged as
the person it belongs to) into those that may be profiled and those withheld: a withheld event reaches
the anonymous metric windows only, never a profile, session, rolling window, trigger, interest, identity
link or the ``events`` table. The rule (docs/privacy.md#consent):

- an event's own statement (``Event.consent``, from ``context.consent.categoryPreferences``) governs it,
  except that a withdrawal recorded by `spoor users consent` or the API wins over it;
- an event that states nothing follows the person's recorded withdrawal and their page's latest statement;
- a page statement that changes what the person withdraws is recorded in ``user_consent`` (``page_``
  columns), so campaigns (marketing) and recommendations (personalisation) follow it too.

Per event this is a dictionary lookup: the gate keeps the rows of ``user_consent`` that withdraw something
(``ConsentBook``), read whole at start and every ``FULL_READ_S``, and the rows changed since its last read
every ``refresh_s``, at the start of a batch (after the previous batch's write, so it never reads back an
older statement than the one it holds). Past ``max_users`` rows it asks PostgreSQL once per batch for the
batch's other users.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from spoor.consent import ANALYTICS, DENIED, WITHHELD
from spoor.events import Event
from spoor.storage.consent_store import StoredConsent
from spoor.stream_processors.blocking import WRITES, retry_transient

NOTHING: frozenset[str] = frozenset()
FULL_READ_S = 600.0  # also forgets rows deleted since (an erased person's, an id merged into another's)
# A change read since (last read - OVERLAP): a transaction that began before the last read and committed
# after it still has its updated_at before that read.
OVERLAP = timedelta(seconds=10)


async def _off_the_loop(call: Callable, *args):
    """``call``'s result, from the worker's database thread (retried while PostgreSQL is unreachable, then
    raised: the batch fail-stops unacknowledged, blocking.py)."""
    return await asyncio.wrap_future(WRITES.submit(retry_transient, call, *args))


@dataclass
class ConsentReads:
    """How the gate reads and writes ``user_consent`` (storage/consent_store.py, or a test's)."""

    withdrawn: Callable[[int], tuple[list[StoredConsent], datetime]]
    changed: Callable[[datetime], tuple[list[StoredConsent], datetime]]
    users: Callable[[Sequence[str]], list[StoredConsent]]
    record: Callable[[list[tuple[str, str, datetime]]], None]  # (user_key, statement, when)


class ConsentGate:
    def __init__(self, reads: ConsentReads, *, max_users: int, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.reads = reads
        self.max_users = max_users
        self.refresh_s = refresh_s
        self.clock = clock
        self.book: dict[str, StoredConsent] = {}  # users who withdraw something
        self.complete = False  # the book holds every such user
        self.read_at: datetime | None = None  # the database's time of the last read
        self.next_full_read = self.next_refresh = 0.0

    async def refresh(self) -> None:
        """Read what changed in ``user_consent`` when due (blocking reads off the event loop)."""
        now = self.clock()
        if self.read_at is None or now >= self.next_full_read:
            rows, self.read_at = await _off_the_loop(self.reads.withdrawn, self.max_users + 1)
            self.book = {row.user_key: row for row in rows[:self.max_users]}
            self.complete = len(rows) <= self.max_users
            self.next_full_read = now + FULL_READ_S
        elif now >= self.next_refresh:
            rows, read_at = await _off_the_loop(self.reads.changed, self.read_at - OVERLAP)
            self.read_at = read_at
            for row in rows:
                self._keep(row)
        else:
            return
        self.next_refresh = now + self.refresh_s

    async def gate(self, events: Sequence[tuple[int, Event]]) -> tuple[list, list, dict]:
        """(the events that may be profiled, those withheld, the page statements to record: user_key ->
        (statement, when it was made)), in the events' order. Records nothing itself: see ``record``."""
        batch: dict[str, StoredConsent | None] = {}  # rows of users the book has no room for
        if not self.complete:
            unknown = {event.user_key for _, event in events} - self.book.keys()
            if unknown:
                batch = dict.fromkeys(unknown)
                batch.update((row.user_key, row) for row in await _off_the_loop(self.reads.users, sorted(unknown)))
        kept, withheld, statements = [], [], {}
        book = self.book
        for item in events:
            event = item[1]
            key = event.user_key
            row = batch[key] if batch and key in batch else book.get(key)
            recorded = row.recorded if row else NOTHING
            page = (row.page or NOTHING) if row else NOTHING
            if event.consent is not None:
                denied = DENIED[event.consent]
                if denied != page:
                    changed = StoredConsent(key, recorded, denied)
                    if key in batch:
                        batch[key] = changed
                    else:
                        self._keep(changed)
                        if not self.complete and key not in self.book:  # no room: held for this batch
                            batch[key] = changed
                    statements[key] = (event.consent, event.received_at)
            else:
                denied = page
            (withheld if ANALYTICS in denied or ANALYTICS in recorded else kept).append(item)
        if withheld:
            WITHHELD.labels(ANALYTICS).inc(len(withheld))
        return kept, withheld, statements

    async def record(self, statements: dict) -> None:
        """Write the batch's changed page statements (before the batch is acknowledged; idempotent)."""
        if statements:
            await _off_the_loop(self.reads.record, [(key, consent, at) for key, (consent, at) in statements.items()])

    def _keep(self, row: StoredConsent) -> None:
        """Hold ``row`` if it withdraws something, else forget the user. Past ``max_users`` a new row is
        not held and the book is no longer complete: batches then ask PostgreSQL for their unknown users
        until a full read finds room again."""
        if not row.withdraws_something:
            self.book.pop(row.user_key, None)
        elif row.user_key in self.book or len(self.book) < self.max_users:
            self.book[row.user_key] = row
        else:
            self.complete = False
