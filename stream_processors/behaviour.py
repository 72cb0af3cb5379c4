"""A user's behaviour state (sessions, activity windows, triggers) and the fold over it. Pure.

``UserBehaviour.apply`` takes the user's events that the profile fold accepted (so a redelivered
event is never seen twice), and ``fire_due`` advances the user to an event time without an event.
Fired triggers stay in ``pending`` until the worker has delivered them (Kafka + PostgreSQL), so a
crash between the state's changelog and the delivery re-delivers them on restart.
``UserBehaviour.absorb`` folds another key's behaviour of the same shopper in (issue 21).
"""

from dataclasses import dataclass, field

import orjson

from spoor.events import Event
from spoor.stream_processors.activity import DAY, NEW_DAYS, Activity
from spoor.stream_processors.behaviour_triggers import Seen, TriggerRules, Triggers
from spoor.stream_processors.sessions import SessionLog


@dataclass(frozen=True, slots=True)
class AnalyticsRules:
    session_inactivity_s: float = 1800.0
    session_lateness_s: float = 6 * 3600.0
    trigger_lateness_s: float = 300.0
    order_dedupe: int = 512  # order ids remembered per user (SPOOR_DEDUPE_WINDOW, as the profile)
    triggers: TriggerRules = TriggerRules()

    @property
    def shortest_delay_s(self) -> float:
        """No deadline (trigger or lifecycle threshold) is closer than this after the event that sets it."""
        t = self.triggers
        return min(t.cart_delay_s, t.browse_delay_s, t.win_back_s, NEW_DAYS * DAY)


@dataclass(slots=True)
class UserBehaviour:
    sessions: SessionLog = field(default_factory=SessionLog)
    activity: Activity = field(default_factory=Activity)
    triggers: Triggers = field(default_factory=Triggers)
    pending: list = field(default_factory=list)  # trigger records fired, delivery not yet confirmed
    too_late_for_session: int = 0  # events of this fold outside the session lateness bound (not stored)
    # Not stored: a lower bound of the next deadline, so most events skip fire_due's work.
    next_deadline_at_least: float | None = None

    def apply(self, user_key: str, event: Event, rules: AnalyticsRules) -> None:
        at = event.event_time.timestamp()
        now = at - rules.trigger_lateness_s
        if self.next_deadline_at_least is None:
            self.next_deadline_at_least = self._next_deadline(rules)
        if now >= self.next_deadline_at_least:
            # Deadlines passed before this event fire first, as the partition's watermark would have.
            self.fire_due(user_key, now, rules)
            self.next_deadline_at_least = self._next_deadline(rules)
        repeated_order = self.activity.is_repeated_order(event)
        if not self.sessions.add(event, at, rules.session_inactivity_s, rules.session_lateness_s, repeated_order):
            self.too_late_for_session += 1
        self.activity.add(event, at, rules.order_dedupe)
        self.triggers.observe(event, at)
        # Any deadline this event opened or moved is at least the shortest delay after it.
        self.next_deadline_at_least = min(self.next_deadline_at_least, at + rules.shortest_delay_s)

    def fire_due(self, user_key: str, now: float, rules: AnalyticsRules) -> None:
        """Fire triggers and lifecycle refreshes due at event time ``now``."""
        self.pending += self.triggers.fire_due(user_key, now, rules.triggers)
        refresh = self.activity.next_refresh()
        while refresh is not None and refresh <= now:
            self.activity.refresh(refresh)
            refresh = self.activity.next_refresh()

    def absorb(self, other: "UserBehaviour", user_key: str, rules: AnalyticsRules) -> None:
        """Fold another key's behaviour of the same shopper (an anonymous id joined to user
        ``user_key``) into this one, as nearly as the bounded state allows as an in-order fold of both
        keys' events would have built it: sessions (``SessionLog.absorb``), activity windows and
        lifecycle (``Activity.absorb``), trigger episodes (``Triggers.absorb``; what they fire on the
        way goes to ``pending``). An order id both keys counted counts once: its later occurrence is
        taken back from its session too, when one session of its key holds its time. Then what is due
        at the latest event of both keys (minus the trigger lateness) fires, as ``apply`` fired it
        before that event in the in-order fold: an episode of one key that the other key's later
        events made due is not left open for a late event to close. ``other``'s fired-but-undelivered
        records come along, re-keyed to ``user_key`` with their trigger ids and episodes unchanged
        (what was delivered under the old key keeps referring to it). The next deadline is recomputed
        by the next ``apply``. The caller applies a merge once; ``other`` is not to be used after it.
        What is approximate is said by each part's ``absorb``."""
        for mine, at, revenue in self.activity.repeated_orders(other.activity):
            if at is not None:
                (self.sessions if mine else other.sessions).forget_purchase(at, revenue)
        self.pending += self.triggers.absorb(other.triggers, user_key, rules.triggers, rules.trigger_lateness_s,
                                             _seen(self.activity), _seen(other.activity))
        self.activity.absorb(other.activity, rules.order_dedupe)
        self.too_late_for_session += other.too_late_for_session + self.sessions.absorb(
            other.sessions, rules.session_inactivity_s, rules.session_lateness_s)
        self.pending += [{**trigger, "user_key": user_key} for trigger in other.pending]
        if self.triggers.last_activity is not None:
            self.fire_due(user_key, self.triggers.last_activity - rules.trigger_lateness_s, rules)
        self.next_deadline_at_least = None

    def _next_deadline(self, rules: AnalyticsRules) -> float:
        candidates = [t for t in (self.triggers.next_deadline(rules.triggers), self.activity.next_refresh())
                      if t is not None]
        return min(candidates) if candidates else float("inf")

    def due_at(self, rules: AnalyticsRules) -> float | None:
        """Watermark at which ``fire_due`` will next have something to do."""
        deadline = self._next_deadline(rules)
        return None if deadline == float("inf") else deadline + rules.trigger_lateness_s

    def encode(self) -> bytes:
        return orjson.dumps([self.sessions.encode(), self.activity.encode(), self.triggers.encode(), self.pending])

    @classmethod
    def decode(cls, raw: bytes) -> "UserBehaviour":
        sessions, activity, triggers, pending = orjson.loads(raw)
        return cls(SessionLog.decode(sessions), Activity.decode(activity), Triggers.decode(triggers), pending)


def _seen(activity: Activity) -> Seen:
    """A key's first event and the purchase times it remembers, for ``Triggers.absorb``."""
    purchases = [fact[0] for fact in activity.order_facts if fact is not None]
    if activity.last_purchase is not None:
        purchases.append(activity.last_purchase)
    return Seen(activity.first_seen, tuple(purchases))


# One table value holds a user's profile and behaviour, so one changelog record makes both durable
# together (two records could be split by a crash, and the shared dedupe would then skip an event
# for the one that was lost). Layout: b"<due at>|<pending>\n<profile json>\n<behaviour json>"; the
# header lets the worker rebuild its timer index after a restart without decoding the JSON.
# orjson never writes a raw newline, so b"\n" separates safely. A bare profile (analytics off) is
# the profile JSON alone, as before.

def pack(profile_json: bytes, behaviour: UserBehaviour, due_at: float | None) -> bytes:
    header = f"{'' if due_at is None else repr(due_at)}|{len(behaviour.pending)}".encode()
    return b"\n".join((header, profile_json, behaviour.encode()))


def unpack(raw: bytes) -> tuple[bytes, bytes | None]:
    """(profile json, behaviour json or None) of a table value."""
    if raw[:1] == b"{":
        return raw, None
    _header, profile_json, behaviour_json = raw.split(b"\n", 2)
    return profile_json, behaviour_json


def read_header(raw: bytes) -> tuple[float | None, int]:
    """(due at, pending triggers) of a table value, without decoding it."""
    if raw[:1] == b"{":
        return None, 0
    due, _, pending = raw[:raw.index(b"\n")].partition(b"|")
    return (float(due) if due else None), int(pending)
