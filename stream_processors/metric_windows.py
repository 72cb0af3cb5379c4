"""Tumbling business-metric windows on event time. Pure: no Kafka, no database, no clock.

Every event adds to one window per resolution (1, 5 and 60 minutes), for each
of its dimensions: ``global``, ``source:<source>`` and ``category:<category>``
(the first ``max_categories`` categories seen; later ones count as
``category:other`` to bound the cardinality). Windows are kept per partition:
events are partitioned by user, so distinct users and sessions of different
partitions are different and the partitions' rows simply add up.

Windows close on event time, per partition: a partition's watermark is its
newest event time minus ``lateness`` (per partition, because a consumer
catching up reads partitions at different speeds); a partition that has had
nothing to read for a while (idle) follows the newest partition instead, so
a quiet partition does not hold every window open. A window closes once its
end is at or before the watermark, and an event for a window already closed
is counted as late (it stays in the ``events`` table, it just misses the
metric). A window that was
already open when this process saw its partition's first event is marked
``partial``:
after a restart its earlier events were folded by the previous process and
are not in this one's memory (the detector skips partial windows).

Events are folded into 1-minute windows only; a closing 1-minute window is
merged into its 5- and 60-minute windows (counts add up, distinct sets are
united), which costs per window what folding every event three times cost
per event. An event too late for its minute but not for its hour still counts
in the hour (it is added to the coarse window directly).

Sessions: an event's ``session_id`` when the event has one, else the user key
(so ``sessions`` counts distinct users until sessionized events exist).
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from spoor.events import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME, MONEY_LIMIT
from spoor.metric_columns import COUNTS, RESOLUTIONS

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MONEY_MAX = MONEY_LIMIT - Decimal("0.0001")  # the largest NUMERIC(18,4)
EARLIEST_S, LATEST_S = EARLIEST_EVENT_TIME.timestamp(), LATEST_EVENT_TIME.timestamp()
KIND_COLUMNS = {"page_view": "page_views", "product_view": "product_views", "click": "clicks",
                "cart_add": "cart_adds", "cart_remove": "cart_removes", "checkout": "checkouts",
                "purchase": "orders", "refund": "refunds", "identify": "identifies", "custom": "custom_events"}
FINEST = min(RESOLUTIONS, key=RESOLUTIONS.get)  # the windows events are folded into
FINEST_S = RESOLUTIONS[FINEST]
COARSER = {name: size for name, size in RESOLUTIONS.items() if name != FINEST}  # rolled up from FINEST
KNOWN_DIMENSIONS_MAX = 10_000  # inputs whose dimensions are remembered (then forgotten all at once)
DEAD_LETTER_PARTITION = -1  # rows counting dead letters (their topic is not partitioned by user)


@dataclass
class Accumulator:
    """One window of one dimension on one partition."""

    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    revenue: Decimal = Decimal(0)
    users: set = field(default_factory=set)
    sessions: set = field(default_factory=set)
    viewers: set = field(default_factory=set)
    carters: set = field(default_factory=set)
    buyers: set = field(default_factory=set)

    @classmethod
    def of(cls, events: list) -> "Accumulator":
        """The accumulator of ``events`` alone, its counts holding only the columns they count (for ``add``)."""
        accumulator = cls(counts={"events": len(events)})
        counts, users, sessions = accumulator.counts, accumulator.users, accumulator.sessions
        revenue = accumulator.revenue
        for event in events:
            kind, user = event.kind.value, event.user_key
            column = KIND_COLUMNS[kind]
            counts[column] = counts.get(column, 0) + 1
            users.add(user)
            sessions.add(getattr(event, "session_id", None) or user)
            if kind == "product_view":
                accumulator.viewers.add(user)
            elif kind == "cart_add":
                accumulator.carters.add(user)
            elif kind == "purchase":
                accumulator.buyers.add(user)
                revenue += event.revenue or 0
        accumulator.revenue = revenue
        return accumulator

    def add(self, other: "Accumulator") -> None:
        """``merge`` for an ``other`` whose counts hold only the columns it counted (``of``)."""
        counts = self.counts
        for column, count in other.counts.items():
            counts[column] += count
        self.revenue += other.revenue
        self.users |= other.users
        self.sessions |= other.sessions
        if other.viewers:
            self.viewers |= other.viewers
        if other.carters:
            self.carters |= other.carters
        if other.buyers:
            self.buyers |= other.buyers

    def merge(self, other: "Accumulator") -> None:
        for column, count in other.counts.items():
            self.counts[column] += count
        self.revenue += other.revenue
        for mine, theirs in ((self.users, other.users), (self.sessions, other.sessions),
                             (self.viewers, other.viewers), (self.carters, other.carters),
                             (self.buyers, other.buyers)):
            mine |= theirs

    def add_dead_letter(self, processor: str) -> None:
        self.counts["dead_letters"] += 1
        if processor == "collector":
            self.counts["collector_rejects"] += 1

    def row(self) -> dict:
        # Revenue of many users in one window may pass what NUMERIC(18,4) holds: the metric saturates.
        revenue = max(-MONEY_MAX, min(self.revenue, MONEY_MAX))
        return {**self.counts, "active_users": len(self.users), "sessions": len(self.sessions),
                "viewers": len(self.viewers), "carters": len(self.carters), "buyers": len(self.buyers),
                "revenue": revenue}


@dataclass
class MetricWindows:
    lateness: timedelta = timedelta(minutes=2)
    max_categories: int = 20
    late_events: int = 0
    out_of_range: int = 0  # events and dead letters with a time outside 1970..2100, not counted
    newest: dict = field(default_factory=dict)  # partition -> newest event time
    first: dict = field(default_factory=dict)  # partition -> first event time seen by this process
    closed: dict = field(default_factory=dict)  # partition -> watermark its windows were closed at
    # (resolution, window start in epoch seconds) -> (partition, dimension) -> Accumulator
    open: dict = field(default_factory=dict)
    categories: set = field(default_factory=set)
    # (source, category, product lines' categories) -> dimensions(...): once computed, an input's dimensions
    # never change (a category is admitted the first time it is seen, or never: ``categories`` only grows)
    _known_dimensions: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def newest_event(self) -> datetime | None:
        return max(self.newest.values(), default=None)

    def dimensions(self, source: str, categories) -> list[str]:
        dims = ["global", f"source:{source[:64]}"]
        for category in sorted({c[:64] for c in categories if c}):
            if category not in self.categories and len(self.categories) < self.max_categories:
                self.categories.add(category)
            dims.append(f"category:{category}" if category in self.categories else "category:other")
        return list(dict.fromkeys(dims))

    def _accumulators(self, at: datetime, partition: int, dimensions: list[str]):
        """The open accumulators ``at`` falls into: its minute's, one per dimension, or when the minute
        is closed, those of its coarser windows still open (none when late for all of them).
        Windows are keyed by their start in epoch seconds (datetime arithmetic per event is slow)."""
        closed = self.closed.get(partition)
        place = self._window(int(at.timestamp() // 1), closed.timestamp() if closed is not None else None)
        if place is None:
            return
        # the coarser windows get this event when its open window closes and rolls up
        window = self.open.get(place)
        if window is None:
            window = self.open[place] = {}
        for dimension in dimensions:
            accumulator = window.get((partition, dimension))
            if accumulator is None:
                accumulator = window[(partition, dimension)] = Accumulator()
            yield accumulator

    def _in_range(self, at: datetime) -> bool:
        """Times are validated upstream; a window outside 1970..2100 would overflow datetime arithmetic."""
        if EARLIEST_S <= at.timestamp() < LATEST_S:
            return True
        self.out_of_range += 1
        return False

    def add_event(self, partition: int, event) -> None:
        self.add_events(((partition, event),))

    def add_events(self, events) -> None:
        """Add each (partition, event) of a batch, in order. The same result as adding them one at a time,
        for less: the events are grouped by partition, window and dimensions first, and each group is
        added once per dimension (a batch of a flood holds thousands of events of a few windows and
        dimensions, each event in 3-4 of them). Watermarks move only in ``advance``, so which window an
        event falls into does not depend on the batch's other events."""
        groups: dict = {}  # (partition, (resolution, window start), dimensions) -> [events]
        first, newest, known = self.first, self.newest, self._known_dimensions
        closed_s = {partition: at.timestamp() for partition, at in self.closed.items()}
        for partition, event in events:
            at = event.event_time
            stamp = at.timestamp()
            if not EARLIEST_S <= stamp < LATEST_S:  # as _in_range
                self.out_of_range += 1
                continue
            if partition not in first:
                first[partition] = at
            if partition not in newest or at > newest[partition]:
                newest[partition] = at
            seconds = int(stamp // 1)
            minute = seconds - seconds % FINEST_S
            closed = closed_s.get(partition)
            place: tuple[str, int] | None = (FINEST, minute)
            if closed is not None and minute + FINEST_S <= closed:  # its minute is closed (few events)
                place = self._window(seconds, closed)
                if place is None:
                    continue
            products = tuple(line.category for line in event.products) if event.products else ()
            seen = (event.source, event.category, products)
            dimensions = known.get(seen)
            if dimensions is None:
                if len(known) >= KNOWN_DIMENSIONS_MAX:
                    known.clear()
                dimensions = known[seen] = tuple(self.dimensions(event.source, [event.category, *products]))
            group = groups.get((partition, place, dimensions))
            if group is None:
                groups[(partition, place, dimensions)] = [event]
            else:
                group.append(event)
        for (partition, place, dimensions), members in groups.items():
            window = self.open.get(place)
            if window is None:
                window = self.open[place] = {}
            group_sum = Accumulator.of(members)
            for dimension in dimensions:
                accumulator = window.get((partition, dimension))
                if accumulator is None:
                    accumulator = window[(partition, dimension)] = Accumulator()
                accumulator.add(group_sum)

    def _window(self, seconds: int, closed_s: float | None) -> tuple[str, int] | None:
        """(resolution, start) of the open window an event at ``seconds`` is added to: its minute, or when
        the minute is closed, the first of its coarser windows still open (None when late for all).
        Counts the event late when its minute is closed."""
        for resolution, size_s in RESOLUTIONS.items():
            start = seconds - seconds % size_s
            if closed_s is not None and start + size_s <= closed_s:
                if resolution == FINEST:
                    self.late_events += 1
                continue
            return resolution, start
        return None

    def add_dead_letter(self, at: datetime, source: str | None, processor: str) -> None:
        if not self._in_range(at):
            return
        dims = ["global"] + ([f"source:{source[:64]}"] if source else [])
        for accumulator in self._accumulators(at, DEAD_LETTER_PARTITION, dims):
            accumulator.add_dead_letter(processor)

    def advance(self, idle: set | frozenset = frozenset()) -> dict[int, datetime]:
        """Move each partition's watermark: its newest event time minus ``lateness``. An ``idle``
        partition (nothing left to read for a while) follows the newest event of any partition, so
        it does not hold the others' windows back; so do dead letters. Returns the watermarks."""
        newest = self.newest_event
        if newest is None:
            return {}
        marks = {p: at - self.lateness for p, at in self.newest.items()}
        for partition in set(idle) | {DEAD_LETTER_PARTITION}:
            marks[partition] = newest - self.lateness
        for partition, mark in marks.items():
            if partition not in self.closed or mark > self.closed[partition]:
                self.closed[partition] = mark
        return {p: self.closed[p] for p in marks}

    def close_due(self, idle: set | frozenset = frozenset()) -> list[dict]:
        """Advance the watermarks; return the rows of every (window, partition) they passed, removed
        from memory, oldest first. A closing minute is rolled up into its coarser windows first."""
        self.advance(idle)
        rows = []
        for resolution, size_s in RESOLUTIONS.items():  # finest first: it rolls up into the others
            for key in sorted(k for k in self.open if k[0] == resolution):
                start_s = key[1]
                start = EPOCH + timedelta(seconds=start_s)
                end = start + timedelta(seconds=size_s)
                accumulators = self.open[key]
                for (partition, dimension) in list(accumulators):
                    closed = self.closed.get(partition)
                    if closed is None or end > closed:
                        continue
                    accumulator = accumulators.pop((partition, dimension))
                    if resolution == FINEST:
                        self._roll_up(start_s, partition, dimension, accumulator)
                    first = self.first.get(partition)
                    rows.append({"resolution": resolution, "window_start": start, "window_end": end,
                                 "dimension": dimension, "partition": partition,
                                 "partial": first is not None and start < first, **accumulator.row()})
                if not accumulators:
                    del self.open[key]
        rows.sort(key=lambda row: (row["window_start"], RESOLUTIONS[row["resolution"]]))  # stable
        return rows

    def _roll_up(self, start_s: int, partition: int, dimension: str, minute: Accumulator) -> None:
        for resolution, size_s in COARSER.items():
            window = self.open.setdefault((resolution, start_s - start_s % size_s), {})
            coarse = window.get((partition, dimension))
            if coarse is None:
                coarse = window[(partition, dimension)] = Accumulator()
            coarse.merge(minute)
