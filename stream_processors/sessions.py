"""Sessions of one user, built from events in any order within a bounded lateness. Pure.

Rules (what the ``sessions`` table means):
- An event that carries a client session id (``context.sessionId``) belongs to that session,
  whatever the gaps between its events.
- Other events are grouped by inactivity: two events are in the same session when the gap between
  them is at most ``inactivity_s`` (30 minutes by default). A late event that falls into a gap can
  bridge two sessions: they merge, and the later one's id is retired.
- An inactivity session's id is ``t<start as epoch milliseconds>``, so the final ids do not depend
  on the order events arrived in; when a late event moves a start earlier, the old id is retired.
- A session's ``purchases`` and ``revenue`` are its orders (an order id repeated within the user's
  recent orders counts once); refunds are not subtracted there (they are in ``user_activity``).
- Lateness is bounded: an event more than ``lateness_s`` older than the user's latest event is not
  placed in a session (``SessionLog.add`` returns False; the worker counts it in a metric). Sessions
  that can no longer receive an event are dropped from the state; their rows stay in PostgreSQL.
- Two keys of one shopper made one (issue 21, ``SessionLog.absorb``): the sessions are those of both
  keys' events together, by the same rules. Sessions with the same client id are one (a browser keeps
  its session id across a login); inactivity sessions that overlap or are at most ``inactivity_s``
  apart are one, with the id of its start; every id that goes is retired.

Times are epoch seconds (floats): this module does no clock reading and no I/O.
"""

from dataclasses import dataclass, field
from decimal import Decimal

from spoor.events import Event, EventKind
from spoor.stream_processors.journeys import Journey

SEALED_CLIENT_IDS = 64  # client ids of dropped sessions remembered, so they are never re-opened
RETIRED_IDS = 16  # retired ids remembered, so their deletion is repeated after a crash


@dataclass(slots=True)
class Session:
    session_id: str
    client: bool  # the id came from the client
    started_at: float
    ended_at: float
    events: int = 0
    page_views: int = 0
    product_views: int = 0
    cart_adds: int = 0
    checkouts: int = 0
    purchases: int = 0
    revenue: str = "0"
    entry: list | None = None  # [time, page url, referrer] of the earliest event with a page url
    campaign: list | None = None  # [time, utm source, utm campaign, utm medium] of the earliest event with UTM data
    view_categories: list = field(default_factory=list)
    cart_categories: list = field(default_factory=list)
    purchase_categories: list = field(default_factory=list)
    journey: Journey = field(default_factory=Journey)  # its pages, dwell times and searches (journeys.py)
    # A client session's start when its row was first keyed: the row's partition (sessions.opened_at, migration
    # 0030), kept when a late event moves the start earlier. An inactivity session's is its id's time.
    opened: float | None = None

    def __post_init__(self) -> None:
        if self.opened is None:
            self.opened = self.started_at

    @property
    def opened_at(self) -> float:
        """The row's partition key: never changes for one (user, session id)."""
        return self.opened if self.client else int(self.session_id[1:]) / 1000

    def add(self, event: Event, at: float, repeated_order: bool = False) -> None:
        self.started_at = min(self.started_at, at)
        self.ended_at = max(self.ended_at, at)
        self.events += 1
        kind = event.kind
        if kind == EventKind.PAGE_VIEW:
            self.page_views += 1
        elif kind == EventKind.PRODUCT_VIEW:
            self.product_views += 1
            _add_category(self.view_categories, event.category)
        elif kind == EventKind.CART_ADD:
            self.cart_adds += 1
            _add_category(self.cart_categories, event.category)
        elif kind == EventKind.CHECKOUT:
            self.checkouts += 1
        elif kind == EventKind.PURCHASE and not repeated_order:
            self.purchases += 1
            self.revenue = str(Decimal(self.revenue) + (event.revenue or 0))
            _add_category(self.purchase_categories, event.category)
            for line in event.products:
                _add_category(self.purchase_categories, line.category)
        self.journey.add(event, at, repeated_order)
        if event.page_url and (self.entry is None or at < self.entry[0]):
            self.entry = [at, event.page_url, event.referrer]
        if (event.utm_source or event.utm_campaign or event.utm_medium) and (
                self.campaign is None or at < self.campaign[0]):
            self.campaign = [at, event.utm_source, event.utm_campaign, event.utm_medium]

    def absorb(self, other: "Session") -> None:
        """Merge another session of the same user into this one."""
        self.started_at = min(self.started_at, other.started_at)
        self.ended_at = max(self.ended_at, other.ended_at)
        for name in ("events", "page_views", "product_views", "cart_adds", "checkouts", "purchases"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.revenue = str(Decimal(self.revenue) + Decimal(other.revenue))
        if other.entry and (self.entry is None or other.entry[0] < self.entry[0]):
            self.entry = other.entry
        if other.campaign and (self.campaign is None or other.campaign[0] < self.campaign[0]):
            self.campaign = other.campaign
        for name in ("view_categories", "cart_categories", "purchase_categories"):
            for category in getattr(other, name):
                _add_category(getattr(self, name), category)
        self.journey.absorb(other.journey)

    def encode(self) -> list:
        return [self.session_id, self.client, self.started_at, self.ended_at,
                [self.events, self.page_views, self.product_views, self.cart_adds, self.checkouts,
                 self.purchases], self.revenue, self.entry, self.campaign,
                self.view_categories, self.cart_categories, self.purchase_categories, self.journey.encode(),
                self.opened]

    @classmethod
    def decode(cls, data: list) -> "Session":
        sid, client, start, end, counts, revenue, entry, campaign, views, carts, purchases, *rest = data
        return cls(sid, client, start, end, *counts, revenue, entry, campaign, views, carts, purchases,
                   Journey.decode(rest[0] if rest else None),  # a state stored before journeys has none
                   rest[1] if len(rest) > 1 else None)  # nor one stored before 0030: its start, as the migration


MAX_CATEGORIES = 20  # per session and step: bounds the state of a shopper browsing everything


def _add_category(categories: list, category: str | None) -> None:
    if category and category not in categories and len(categories) < MAX_CATEGORIES:
        categories.append(category)


def inactivity_id(started_at: float) -> str:
    return f"t{round(started_at * 1000)}"


@dataclass(slots=True)
class SessionLog:
    """The sessions of one user that can still change, and what the writer must delete."""

    sessions: list = field(default_factory=list)  # Session, any order
    latest: float | None = None  # the user's latest event time
    sealed_client_ids: list = field(default_factory=list)
    retired_ids: list = field(default_factory=list)
    # Sessions dropped from ``sessions`` by the latest fold that dropped any: stored, so a redelivered
    # batch (state ahead of PostgreSQL) can write them again.
    closed: list = field(default_factory=list)
    changed: set = field(default_factory=set)  # not stored: ids of sessions changed since decoding
    closed_now: list = field(default_factory=list)  # not stored: sessions dropped since decoding

    def add(self, event: Event, at: float, inactivity_s: float, lateness_s: float,
            repeated_order: bool = False) -> bool:
        """Place the event in its session. False if it is later than the lateness bound allows."""
        if self.latest is not None and at < self.latest - lateness_s:
            return False
        if event.session_id:
            if event.session_id in self.sealed_client_ids:
                return False
            session = next((s for s in self.sessions if s.client and s.session_id == event.session_id), None)
            if session is None:
                session = Session(event.session_id, True, at, at)
                self.sessions.append(session)
            session.add(event, at, repeated_order)
            self.changed.add(session.session_id)
        else:
            self.changed.add(self._add_by_inactivity(event, at, inactivity_s, repeated_order))
        self.latest = at if self.latest is None else max(self.latest, at)
        self._seal(inactivity_s, lateness_s)
        return True

    def _add_by_inactivity(self, event: Event, at: float, inactivity_s: float, repeated_order: bool) -> str:
        near = [s for s in self.sessions
                if not s.client and s.started_at - inactivity_s <= at <= s.ended_at + inactivity_s]
        if len(near) > 1:
            near.sort(key=lambda s: s.started_at)
        if not near:
            session = Session(inactivity_id(at), False, at, at)
            self.sessions.append(session)
        else:
            session = near[0]
            for other in near[1:]:  # the event bridges the gap between them
                session.absorb(other)
                self.sessions.remove(other)
                self._retire(other.session_id)
        session.add(event, at, repeated_order)
        new_id = inactivity_id(session.started_at)
        if new_id != session.session_id:
            self._retire(session.session_id)
            session.session_id = new_id
            if new_id in self.retired_ids:
                self.retired_ids.remove(new_id)
        return new_id

    def _retire(self, session_id: str) -> None:
        self.retired_ids.append(session_id)
        del self.retired_ids[:-RETIRED_IDS]

    def absorb(self, other: "SessionLog", inactivity_s: float, lateness_s: float) -> int:
        """Fold the sessions of another key of the same user into this log (issue 21), as if its events
        had been added here; returns how many of its events could not be placed (as ``add``'s False).
        The caller applies a merge once; ``other`` is not to be used after it.

        Exact while the sessions of both keys are still in their states (the lateness bound and the
        inactivity gap behind each key's latest event): the sessions, their counts, revenue, times,
        entry page and campaign, and their ids by the module's rules. Every session taken from
        ``other`` or changed is written again (``changed``); an id that goes, this key's or ``other``'s
        (its rows move to this key in PostgreSQL), is retired, so its row is deleted; then the sessions
        that the later of the two latest events leaves behind are sealed.

        Approximate: a session one key had sealed (dropped, its row final) is not merged with the
        other key's (a live session of a client id this key sealed is not placed: its events are
        counted as too late; this key's live session of a client id the other key sealed stays
        open); the category lists keep this key's first (the state holds no times for them) and stop
        at ``MAX_CATEGORIES``.
        """
        if other.latest is not None:
            self.latest = other.latest if self.latest is None else max(self.latest, other.latest)
        not_placed = 0
        inactivity = [s for s in self.sessions if not s.client]
        theirs = [Session.decode(s.encode()) for s in other.sessions]  # other's objects stay other's
        for session in theirs:
            if not session.client:
                inactivity.append(session)
                continue
            if session.session_id in self.sealed_client_ids:
                not_placed += session.events
                continue
            mine = next((s for s in self.sessions if s.client and s.session_id == session.session_id), None)
            if mine is None:
                self.sessions.append(session)
            else:
                mine.absorb(session)
            self.changed.add(session.session_id)
        live_clients = {s.session_id for s in self.sessions if s.client}
        for client_id in other.sealed_client_ids:
            if client_id not in self.sealed_client_ids and client_id not in live_clients:
                self.sealed_client_ids.append(client_id)
        del self.sealed_client_ids[:-SEALED_CLIENT_IDS]

        ours = {id(s) for s in self.sessions}
        merged, retired, end = [], [], None
        for session in sorted(inactivity, key=lambda s: (s.started_at, id(s) not in ours)):
            if merged and session.started_at <= end + inactivity_s:  # overlapping, or the gap is short
                merged[-1].append(session)
                end = max(end, session.ended_at)
            else:
                merged.append([session])
                end = session.ended_at
        kept = [s for s in self.sessions if s.client]
        for group in merged:
            base = group[0]
            for session in group[1:]:
                base.absorb(session)
            new_id = inactivity_id(base.started_at)
            retired += [s.session_id for s in group if s.session_id != new_id]
            if len(group) > 1 or id(base) not in ours or base.session_id != new_id:
                self.changed.add(new_id)
            base.session_id = new_id
            kept.append(base)
        self.sessions = kept
        live = {s.session_id for s in self.sessions}
        retired = list(dict.fromkeys(retired))
        self.retired_ids = [sid for sid in self.retired_ids if sid not in retired] + retired
        self.retired_ids = [sid for sid in self.retired_ids if sid not in live]
        del self.retired_ids[:-max(RETIRED_IDS, len(retired))]  # all of this merge's, until the next retires
        if self.latest is not None:
            self._seal(inactivity_s, lateness_s)
        return not_placed

    def forget_purchase(self, at: float, revenue: str | None) -> bool:
        """Take back an order counted in the session holding time ``at`` (an order id another key of
        the user counted first: ``UserBehaviour.absorb``). False when no one session can be told (the
        session was sealed, or client sessions overlap there): then it stays counted."""
        found = [s for s in self.sessions if s.started_at <= at <= s.ended_at and s.purchases > 0]
        if len(found) != 1:
            return False
        session = found[0]
        session.purchases -= 1
        session.journey.forget_purchase(at)
        if revenue is not None:
            session.revenue = str(Decimal(session.revenue) - Decimal(revenue))
        self.changed.add(session.session_id)
        return True

    def _seal(self, inactivity_s: float, lateness_s: float) -> None:
        """Drop sessions no acceptable event can reach any more (their rows are final)."""
        horizon = self.latest - lateness_s
        keep = []
        for session in self.sessions:
            if session.client:
                # A client session can take events after any gap: keep it until it is older than
                # the lateness bound and the inactivity gap together, then refuse its id.
                if session.ended_at + max(inactivity_s, lateness_s) < horizon:
                    self.sealed_client_ids.append(session.session_id)
                    del self.sealed_client_ids[:-SEALED_CLIENT_IDS]
                    self._close(session)
                    continue
            elif session.ended_at + inactivity_s < horizon:
                self._close(session)
                continue
            keep.append(session)
        self.sessions = keep

    def _close(self, session: Session) -> None:
        self.closed_now.append(session)

    def to_write(self, everything: bool) -> list:
        """Sessions whose rows must be (re)written: changed or dropped since decoding; with
        ``everything``, also the kept ones and those the previous dropping fold dropped."""
        changed = [s for s in self.sessions if everything or s.session_id in self.changed]
        return changed + self.closed_now + (self.closed if everything else [])

    def encode(self) -> list:
        closed = self.closed_now or self.closed
        return [[s.encode() for s in self.sessions], self.latest, self.sealed_client_ids, self.retired_ids,
                [s.encode() for s in closed]]

    @classmethod
    def decode(cls, data: list) -> "SessionLog":
        sessions, latest, sealed, retired, closed = data
        return cls([Session.decode(s) for s in sessions], latest, sealed, retired,
                   [Session.decode(s) for s in closed])
