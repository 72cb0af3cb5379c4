"""One shopper, one profile (issue 21): folding one key's state into another's (``absorb``).

The proof: for many journeys, the events of an anonymous id A are folded into A's state and those of
the user U into U's, as the worker does (``UserProfile.apply``, then ``UserBehaviour.apply`` for the
events it accepted, ``fire_due`` at the partition's watermark, the table value encoded between
batches); A's state is absorbed into U's where the journey says (later events of A are forwarded
re-keyed to U, as stream_processors/identities.py does); and the outcome is compared with folding
every event, A's re-keyed to U, into one state in the same order (event time, but for the late
events some journeys send): the profile row, the activity row, the ``sessions`` table as the batches
wrote it (A's rows moved to U as storage/identities.move_rows moves them) and the triggers fired.

Where the bounded state cannot give the exact answer, the documented bound is asserted instead; those
cases are few and named (``test_bound_*``), and the property tests compare what is exact for them.
"""

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoor.events import Event, EventKind, ProductLine
from spoor.stream_processors.analytics_tracker import session_row
from spoor.stream_processors.behaviour import AnalyticsRules, UserBehaviour, pack, unpack
from spoor.stream_processors.behaviour_triggers import CART, WIN_BACK, TriggerRules, Triggers
from spoor.stream_processors.profile import UserProfile
from spoor.stream_processors.sessions import SessionLog, inactivity_id

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
MIN, HOUR, DAY = 60.0, 3600.0, 86400.0
U, A, A2 = "user-1", "anon-1", "anon-2"
DEDUPE = 512
# Lateness of two days: the property journeys (under a day) keep every session in the state.
RULES = AnalyticsRules(session_inactivity_s=30 * MIN, session_lateness_s=2 * DAY, trigger_lateness_s=5 * MIN,
                       order_dedupe=DEDUPE,
                       triggers=TriggerRules(cart_delay_s=HOUR, browse_views=3, browse_delay_s=30 * MIN,
                                             win_back_s=30 * DAY))


# --- the worker, as far as one user's state goes --------------------------------------------------

class Key:
    """One user key as the worker holds it: its table value, and what its batches wrote."""

    def __init__(self, user_key: str, rules: AnalyticsRules = RULES, deliver: bool = True):
        self.user_key = user_key
        self.rules = rules
        self.deliver = deliver  # False: fired triggers stay pending (their delivery not confirmed yet)
        self.value: bytes | None = None
        self.sessions: dict[str, dict] = {}  # the ``sessions`` table: session id -> row
        self.fired: dict[tuple, dict] = {}  # ``behaviour_triggers``: (kind, episode) -> record
        self.too_late = 0

    def load(self) -> tuple[UserProfile, UserBehaviour]:
        if self.value is None:
            return UserProfile(self.user_key), UserBehaviour()
        profile_json, behaviour_json = unpack(self.value)
        return UserProfile.decode(profile_json), UserBehaviour.decode(behaviour_json)

    def store(self, profile: UserProfile, behaviour: UserBehaviour) -> None:
        self.value = pack(profile.encode(), behaviour, behaviour.due_at(self.rules))

    def batch(self, events: list[Event]) -> None:
        """ProfileTracker._fold, then AnalyticsTracker.fold."""
        profile, behaviour = self.load()
        new = [e for e in events if profile.apply(e, DEDUPE)]
        for e in new:
            behaviour.apply(self.user_key, e, self.rules)
        self.write(behaviour, rewrite=len(new) < len(events))
        self.store(profile, behaviour)

    def advance(self, now: float) -> None:
        """AnalyticsTracker.advance: fire what is due at the watermark minus the lateness."""
        if self.value is None:
            return
        profile, behaviour = self.load()
        behaviour.fire_due(self.user_key, now, self.rules)
        self.write(behaviour, rewrite=False)
        self.store(profile, behaviour)

    def write(self, behaviour: UserBehaviour, rewrite: bool) -> None:
        """What a batch writes: AnalyticsTracker._collect and take_output, then the writer's deletes and upserts."""
        rows = {s.session_id: session_row(self.user_key, s) for s in behaviour.sessions.to_write(rewrite)}
        for session_id in behaviour.sessions.retired_ids:
            if session_id not in rows:
                self.sessions.pop(session_id, None)
        for session_id, row in rows.items():
            old = self.sessions.get(session_id)
            if old is None or old["events"] <= row["events"]:
                self.sessions[session_id] = row
        for trigger in behaviour.pending:
            self.fired[(trigger["kind"], trigger["episode"])] = trigger
        if self.deliver:
            behaviour.pending = []
        self.too_late += behaviour.too_late_for_session
        behaviour.too_late_for_session = 0


def absorb(into: Key, other: Key) -> None:
    """Step 3 of identities.py: PostgreSQL's rows of ``other`` move to ``into`` (a session of the same
    id as one of ``into``'s goes), ``other``'s state is folded into ``into``'s, every session is written."""
    for session_id, row in other.sessions.items():
        into.sessions.setdefault(session_id, {**row, "user_key": into.user_key})
    for episode, trigger in other.fired.items():
        into.fired.setdefault(episode, {**trigger, "user_key": into.user_key})
    profile, behaviour = into.load()
    if other.value is not None:
        other_profile, other_behaviour = other.load()
        profile.absorb(other_profile, DEDUPE)
        behaviour.absorb(other_behaviour, into.user_key, into.rules)
    into.write(behaviour, rewrite=True)
    into.store(profile, behaviour)
    into.too_late += other.too_late


def run(steps: list[tuple], *, watermark: bool = True, flush_days: float = 40,
        rules: AnalyticsRules = RULES, undelivered: tuple = ()) -> tuple[dict[str, Key], Key]:
    """Play ``steps`` (("event", key, event), ("merge", from key, into key), ("advance", event time))
    on the keys, and every event re-keyed to U on one reference state; with ``watermark``, every key's
    timers fire at the latest event time (one partition); at the end, everything ``flush_days`` on."""
    keys: dict[str, Key] = {}
    into: dict[str, str] = {}
    reference = Key(U, rules)
    latest = float("-inf")

    def key(name: str) -> Key:
        return keys.setdefault(name, Key(name, rules, deliver=name not in undelivered))

    def advance(now: float) -> None:
        for k in [*keys.values(), reference]:
            k.advance(now)

    for step in steps:
        if step[0] == "event":
            _, name, event = step
            while name in into:  # forwarded, re-keyed, as identities.py does after a merge
                name = into[name]
            key(name).batch([event.model_copy(update={"user_key": name})])
            reference.batch([event.model_copy(update={"user_key": U})])
            latest = max(latest, event.event_time.timestamp())
            if watermark:
                advance(latest - rules.trigger_lateness_s)
        elif step[0] == "merge":
            _, from_key, into_key = step
            absorb(key(into_key), keys.pop(from_key, None) or Key(from_key, rules))
            into[from_key] = into_key
        else:
            advance(step[1] - rules.trigger_lateness_s)
    if flush_days:
        advance(latest + flush_days * DAY)
    return keys, reference


def profile_row(key: Key) -> dict:
    return key.load()[0].row()


def activity_row(key: Key) -> dict:
    return key.load()[1].activity.row(U)


def sessions_table(key: Key) -> dict:
    """The sessions rows, revenue as a number and category lists as sets (their order is approximate), without
    the partition key (opened_at: a merged client session keeps the one its row has under the key merged into,
    where the reference keyed it by its first event; migration 0030)."""
    table = {}
    for session_id, row in key.sessions.items():
        row = {**row, "revenue": Decimal(row["revenue"])}
        del row["opened_at"]
        for name in ("view_categories", "cart_categories", "purchase_categories"):
            row[name] = sorted(row[name])
        table[session_id] = row
    return table


def fired(key: Key, kinds: tuple = ()) -> dict:
    """The trigger records fired, by (kind, episode), without the key their trigger id was fired under."""
    return {episode: {k: v for k, v in trigger.items() if k != "trigger_id"}
            for episode, trigger in key.fired.items() if not kinds or episode[0] in kinds}


def assert_same(merged: Key, reference: Key, *, cart: bool = True, triggers: bool = True) -> None:
    got, want = profile_row(merged), profile_row(reference)
    if not cart:
        del got["cart_value"], want["cart_value"]
    assert got == want
    assert activity_row(merged) == activity_row(reference)
    assert sessions_table(merged) == sessions_table(reference)
    kinds = () if triggers else (WIN_BACK,)
    assert fired(merged, kinds) == fired(reference, kinds)
    assert merged.too_late == reference.too_late


# --- events ---------------------------------------------------------------------------------------

_ids = iter(range(10**9))


def ev(key: str, kind: EventKind, minutes: float, **fields) -> tuple:
    """An event step of ``key``: anonymous keys' events carry their anonymous id, the user's a user id."""
    at = T0 + timedelta(minutes=minutes)
    ids = {"user_id": U} if key == U else {"anonymous_id": key}
    event = Event(event_id=f"e{next(_ids)}", kind=kind, name=kind.value, user_key=key, event_time=at,
                  received_at=at, **{**ids, **fields})
    return ("event", key, event)


def login(minutes: float, anonymous: str = A, **fields) -> tuple:
    return ev(U, EventKind.IDENTIFY, minutes, anonymous_id=anonymous, **fields)


def merge(from_key: str = A, into_key: str = U) -> tuple:
    return ("merge", from_key, into_key)


def money(value) -> Decimal:
    return Decimal(str(value))


# --- hand-written journeys ----------------------------------------------------------------------

def test_browse_anonymously_then_log_in_at_checkout_and_buy():
    steps = [
        ev(A, EventKind.PAGE_VIEW, 0, page_url="https://shop/", referrer="https://news/", utm_source="mail"),
        ev(A, EventKind.PRODUCT_VIEW, 1, product_id="P1", category="shoes"),
        ev(A, EventKind.PRODUCT_VIEW, 2, product_id="P2", category="bags"),
        ev(A, EventKind.CART_ADD, 3, product_id="P1", price=money(40), quantity=2, category="shoes"),
        ev(A, EventKind.CHECKOUT, 4),
        login(5),
        merge(),  # the merge record reaches U's partition right after the login
        ev(U, EventKind.PURCHASE, 7, order_id="o1", revenue=money(80)),
        ev(U, EventKind.PAGE_VIEW, 8, page_url="https://shop/thanks"),
    ]
    keys, reference = run(steps)
    assert set(keys) == {U}
    assert_same(keys[U], reference)
    row = profile_row(keys[U])
    assert (row["user_id"], row["events"], row["orders"], row["revenue"], row["cart_value"]) == (U, 8, 1, 80, 0)
    assert (row["distinct_products_viewed"], row["first_seen_at"]) == (2, T0)
    [session] = keys[U].sessions.values()  # one visit: the login did not split it
    assert (session["events"], session["purchases"], session["entry_page"], session["utm_source"]) == (
        8, 1, "https://shop/", "mail")
    assert [t for t in keys[U].fired.values() if t["kind"] == CART] == []


def test_the_merge_can_come_after_the_user_went_on_without_it():
    """The merge record comes late (A's partition was slow): U bought and browsed on meanwhile."""
    steps = [
        ev(A, EventKind.PRODUCT_VIEW, 0, product_id="P1", category="shoes"),
        ev(A, EventKind.PRODUCT_VIEW, 1, product_id="P1", category="shoes"),
        ev(A, EventKind.CART_ADD, 2, product_id="P1", price=money(40), category="shoes"),
        login(5),
        ev(U, EventKind.PRODUCT_VIEW, 6, product_id="P1", category="shoes"),
        ev(U, EventKind.PURCHASE, 8, order_id="o1", revenue=money(40)),
        ev(U, EventKind.PRODUCT_VIEW, 20, product_id="P9", category="toys"),
        merge(),
    ]
    keys, reference = run(steps, watermark=False)
    assert_same(keys[U], reference)
    assert profile_row(keys[U])["cart_value"] == 0  # the anonymous cart was bought


def test_a_cart_added_anonymously_and_ordered_after_login_fires_no_cart_abandonment():
    for merge_at in (3, 5):  # before and after the order
        steps = [
            ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(25), category="shoes"),
            ev(A, EventKind.CART_ADD, 10, product_id="P2", price=money(5), category="socks"),
            login(40),
            ev(U, EventKind.CHECKOUT, 45),
            ev(U, EventKind.PURCHASE, 50, order_id="o7", revenue=money(30)),
            ev(U, EventKind.PAGE_VIEW, 200),  # far past the anonymous cart's deadline
        ]
        steps.insert(merge_at, merge())
        for watermark in (True, False):
            keys, reference = run(steps, watermark=watermark)
            assert_same(keys[U], reference)
            kinds = [t["kind"] for t in keys[U].fired.values()]
            assert CART not in kinds and kinds == [WIN_BACK]
            assert profile_row(keys[U])["cart_value"] == 0


def test_a_cart_added_to_after_login_and_ordered_past_the_anonymous_deadline_fires_nothing():
    """The user's adds kept the one episode open past the anonymous add's deadline, then the order
    closed it; the merge record came after all that."""
    steps = [
        ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(25)),
        login(10),
        ev(U, EventKind.CART_ADD, 30, product_id="P2", price=money(5)),
        ev(U, EventKind.PURCHASE, 75, order_id="o1", revenue=money(30)),  # past 0 + 60 min + lateness
        ev(U, EventKind.PAGE_VIEW, 90),
        merge(),
    ]
    keys, reference = run(steps, watermark=False)
    assert_same(keys[U], reference)
    assert CART not in {kind for kind, _episode in keys[U].fired}


def test_an_anonymous_cart_that_fell_due_before_the_order_still_fires_once():
    """Abandoned on Monday, bought on Friday: the in-order fold fired Monday's cart at its deadline."""
    steps = [
        ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(25)),
        login(4 * 1440),
        ev(U, EventKind.PURCHASE, 4 * 1440 + 5, order_id="o1", revenue=money(25)),
        merge(),
    ]
    keys, reference = run(steps, watermark=False)  # A's partition was quiet: its cart is still open
    assert_same(keys[U], reference)
    [cart] = [t for t in keys[U].fired.values() if t["kind"] == CART]
    assert (cart["user_key"], cart["fired_at"], cart["details"]["cart_value"]) == (U, "2026-03-02T11:00:00Z", "25")


def test_the_user_cart_is_closed_by_an_anonymous_order_and_carts_that_overlap_are_one_episode():
    # Logged in on the laptop, the shopper adds to the cart; on the phone, not logged in, orders.
    bought = [ev(U, EventKind.CART_ADD, 0, product_id="P1", price=money(10)),
              ev(A, EventKind.PURCHASE, 20, order_id="o1", revenue=money(10)),
              ev(U, EventKind.PAGE_VIEW, 30),
              merge()]
    # Two carts 20 minutes apart, one per key: one episode, opened at the first add.
    overlapping = [ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(10), quantity=2),
                   login(10),
                   ev(U, EventKind.CART_ADD, 20, product_id="P1", price=money(12)),
                   ev(U, EventKind.CART_ADD, 21, product_id="P2", price=money(3)),
                   merge()]
    for steps, cart_triggers in ((bought, 0), (overlapping, 1)):
        keys, reference = run(steps, watermark=False)
        assert_same(keys[U], reference)
        carts = [t for t in keys[U].fired.values() if t["kind"] == CART]
        assert len(carts) == cart_triggers
    assert carts[0]["episode"] == "20260302T100000.000Z"
    assert carts[0]["details"]["items"] == [{"product_id": "P1", "quantity": 3, "price": "12"},
                                            {"product_id": "P2", "quantity": 1, "price": "3"}]


def test_two_devices_are_absorbed_one_after_the_other():
    steps = [
        ev(A, EventKind.PRODUCT_VIEW, 0, product_id="P1", category="shoes", session_id="phone-1"),
        ev(A, EventKind.CART_ADD, 1, product_id="P1", price=money(30), session_id="phone-1"),
        login(2, session_id="phone-1"),
        merge(),
        ev(A2, EventKind.PRODUCT_VIEW, 3 * 1440, product_id="P1", category="shoes"),  # the laptop, days later
        ev(A2, EventKind.PRODUCT_VIEW, 3 * 1440 + 1, product_id="P2", category="bags"),
        ev(A2, EventKind.CART_ADD, 3 * 1440 + 2, product_id="P2", price=money(15)),
        login(3 * 1440 + 3, anonymous=A2),
        ev(U, EventKind.PURCHASE, 3 * 1440 + 4, order_id="o1", revenue=money(15)),
        merge(A2),
        ev(A2, EventKind.PAGE_VIEW, 3 * 1440 + 6),  # the laptop's tab, forwarded
    ]
    keys, reference = run(steps, rules=replace(RULES, session_lateness_s=6 * HOUR))  # the phone's visit is sealed
    assert set(keys) == {U}
    assert_same(keys[U], reference)
    row = profile_row(keys[U])
    assert (row["events"], row["distinct_products_viewed"], row["orders"], row["cart_value"]) == (9, 2, 1, 0)
    assert len(keys[U].sessions) == 2 and keys[U].sessions["phone-1"]["events"] == 3
    # The phone's cart fired (days before the laptop), as the in-order fold fires it.
    assert [t["kind"] for t in keys[U].fired.values() if t["kind"] == CART] == [CART]


def test_a_late_anonymous_event_is_forwarded_and_its_retry_counts_once():
    late = ev(A, EventKind.PRODUCT_VIEW, 2.5, product_id="P2", category="bags")
    steps = [
        ev(A, EventKind.PAGE_VIEW, 0),
        ev(A, EventKind.CART_ADD, 2, product_id="P1", price=money(10)),
        login(3),
        merge(),
        ev(U, EventKind.PURCHASE, 4, order_id="o1", revenue=money(10)),
        ev(U, EventKind.PAGE_VIEW, 50),
        late,  # sent by the anonymous tab, arrives after the merge: forwarded re-keyed to U
        late,  # the client's retry of it
    ]
    keys, reference = run(steps)
    assert_same(keys[U], reference)
    row = profile_row(keys[U])
    assert (row["events"], row["product_views"]) == (6, 1)
    # The late view lands in the first visit (minute 2.5), not in a session of its own.
    assert sorted(s["events"] for s in keys[U].sessions.values()) == [1, 5]


def test_an_anonymous_event_retried_after_the_merge_is_recognised_by_its_id():
    view = ev(A, EventKind.PRODUCT_VIEW, 1, product_id="P1")
    keys, reference = run([view, login(2), merge(), view, ev(U, EventKind.PAGE_VIEW, 3)])
    assert_same(keys[U], reference)
    assert profile_row(keys[U])["events"] == 3


def test_a_repeated_order_id_on_both_keys_counts_once():
    """The order sent by the browser before the login and by the shop's backend after it."""
    steps = [
        ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(20)),
        ev(A, EventKind.PURCHASE, 1, order_id="o1", revenue=money("20.50")),
        ev(A, EventKind.PAGE_VIEW, 2),
        login(3),
        ev(U, EventKind.PURCHASE, 3.5, order_id="o1", revenue=money("20.50")),
        ev(U, EventKind.PURCHASE, 4, order_id="o2", revenue=money(3)),
        ev(U, EventKind.REFUND, 5, order_id="o2", revenue=money(1)),
        merge(),
    ]
    keys, reference = run(steps, watermark=False, flush_days=0)
    assert_same(keys[U], reference)
    row = profile_row(keys[U])
    assert (row["orders"], row["revenue"]) == (2, money("22.50"))
    activity = activity_row(keys[U])
    assert (activity["frequency"], activity["monetary"], activity["purchases_1d"]) == (2, money("22.50"), 2)
    [session] = keys[U].sessions.values()
    assert (session["purchases"], Decimal(session["revenue"])) == (2, money("23.50"))


def test_products_viewed_under_both_keys_count_once():
    steps = [ev(A, EventKind.PRODUCT_VIEW, m, product_id=p) for m, p in enumerate(["P1", "P2", "P3"])]
    steps += [login(5)] + [ev(U, EventKind.PRODUCT_VIEW, 6 + m, product_id=p) for m, p in enumerate(["P3", "P4", "P1"])]
    keys, reference = run(steps + [merge()])
    assert_same(keys[U], reference)
    assert profile_row(keys[U])["distinct_products_viewed"] == 4


def test_one_client_session_id_on_both_keys_is_one_session():
    """The browser keeps its session id across the login."""
    steps = [
        ev(A, EventKind.PAGE_VIEW, 0, session_id="s1", page_url="https://shop/landing", utm_campaign="spring"),
        ev(A, EventKind.PRODUCT_VIEW, 1, session_id="s1", category="shoes"),
        ev(A, EventKind.PAGE_VIEW, 2),  # no session id: an inactivity session beside it
        login(90, session_id="s1"),  # the same tab, 90 minutes later: still s1
        ev(U, EventKind.CART_ADD, 91, session_id="s1", product_id="P1", price=money(9), category="shoes"),
        ev(U, EventKind.PAGE_VIEW, 100),  # and a second inactivity session of U's
        merge(),
    ]
    keys, reference = run(steps)
    assert_same(keys[U], reference)
    s1 = keys[U].sessions["s1"]
    assert (s1["events"], s1["product_views"], s1["cart_adds"], s1["entry_page"], s1["utm_campaign"]) == (
        4, 1, 1, "https://shop/landing", "spring")
    assert s1["duration_s"] == 91 * MIN


def test_inactivity_sessions_of_both_keys_that_touch_merge_and_the_superseded_ids_are_deleted():
    steps = [
        ev(U, EventKind.PAGE_VIEW, 10),  # U's session t(10)
        ev(U, EventKind.PAGE_VIEW, 70),  # U's session t(70)
        ev(A, EventKind.PAGE_VIEW, 0),  # A's t(0), 10 minutes before U's first
        ev(A, EventKind.PAGE_VIEW, 40),  # A's t(40), bridging U's two sessions
        ev(A, EventKind.PAGE_VIEW, 300),  # far apart: stays its own session
        merge(),
    ]
    keys, reference = run(steps)
    assert_same(keys[U], reference)
    start = round(T0.timestamp() * 1000)
    assert sorted(keys[U].sessions) == [f"t{start}", f"t{start + 300 * 60_000}"]
    assert keys[U].sessions[f"t{start}"]["events"] == 4


def test_views_of_one_product_under_both_keys_are_one_browse_episode_and_an_order_closes_them():
    views = [ev(A, EventKind.PRODUCT_VIEW, m, product_id="P1", category="tv") for m in (0, 1, 2)]
    views.append(ev(A, EventKind.PRODUCT_VIEW, 3, product_id="P2", category="tv"))
    followed = views + [login(10), ev(U, EventKind.PRODUCT_VIEW, 20, product_id="P1", category="tv"), merge()]
    keys, reference = run(followed, watermark=False)
    assert_same(keys[U], reference)
    [browse] = [t for t in keys[U].fired.values() if t["kind"] == "browse_abandonment"]
    assert (browse["episode"], browse["details"]["views"], browse["fired_at"]) == (
        "P1@20260302T100000.000Z", 4, "2026-03-02T10:50:00Z")
    bought = views + [login(10), ev(U, EventKind.PURCHASE, 20, order_id="o1", revenue=money(1)), merge()]
    keys, reference = run(bought, watermark=False)
    assert_same(keys[U], reference)
    assert [t["kind"] for t in keys[U].fired.values()] == [WIN_BACK]


def test_a_win_back_of_the_anonymous_key_fires_when_the_user_comes_back_long_after():
    steps = [ev(A, EventKind.PAGE_VIEW, 0), login(40 * 1440), ev(U, EventKind.PAGE_VIEW, 40 * 1440 + 1), merge()]
    keys, reference = run(steps, watermark=False)  # A's partition was quiet: its win-back had not fired
    assert_same(keys[U], reference)
    assert sorted(t["episode"] for t in keys[U].fired.values() if t["kind"] == WIN_BACK) == [
        "20260302T100000.000Z", "20260411T100100.000Z"]


def test_a_client_session_id_one_key_sealed_is_not_reopened_by_the_other_keys():
    def log_of(*events: tuple) -> SessionLog:
        log = SessionLog()
        for _step, _key, event in events:
            log.add(event, event.event_time.timestamp(), 30 * MIN, HOUR)
        return log

    sealed = log_of(ev(U, EventKind.PAGE_VIEW, 0, session_id="s1"), ev(U, EventKind.PAGE_VIEW, 500))
    assert sealed.sealed_client_ids == ["s1"]
    live = log_of(ev(A, EventKind.PAGE_VIEW, 480, session_id="s1"), ev(A, EventKind.CLICK, 481, session_id="s1"))
    assert sealed.absorb(live, 30 * MIN, HOUR) == 2  # its two events are not placed (too late)
    assert [s.session_id for s in sealed.sessions] == [inactivity_id(T0.timestamp() + 500 * MIN)]
    # The other way round: this key's live session of that id stays open for its next events.
    live = log_of(ev(A, EventKind.PAGE_VIEW, 480, session_id="s1"))
    sealed = log_of(ev(U, EventKind.PAGE_VIEW, 0, session_id="s1"), ev(U, EventKind.PAGE_VIEW, 500))
    assert live.absorb(sealed, 30 * MIN, HOUR) == 0
    assert "s1" not in live.sealed_client_ids
    again = ev(A, EventKind.PAGE_VIEW, 482, session_id="s1")[2]
    assert live.add(again, again.event_time.timestamp(), 30 * MIN, HOUR)
    assert next(s for s in live.sessions if s.session_id == "s1").events == 2


def test_fired_but_undelivered_triggers_of_the_other_key_come_along_re_keyed():
    steps = [ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(5)),
             ev(A, EventKind.PAGE_VIEW, 70),  # fires A's cart: pending, its delivery not confirmed
             login(71)]
    keys, _reference = run(steps, undelivered=(A,), flush_days=0)
    [pending] = keys[A].load()[1].pending
    assert pending["trigger_id"] == f"cart_abandonment:{A}:20260302T100000.000Z"
    _profile, behaviour = keys[U].load()
    behaviour.next_deadline_at_least = 0.0
    _other_profile, other = keys[A].load()
    behaviour.absorb(other, U, RULES)
    assert behaviour.pending == [{**pending, "user_key": U}]  # its id and episode unchanged
    assert behaviour.next_deadline_at_least is None


def test_absorbing_an_empty_or_into_an_empty_state_is_the_other_state():
    steps = [ev(A, EventKind.PRODUCT_VIEW, 0, product_id="P1"), ev(A, EventKind.CART_ADD, 1, product_id="P1",
                                                                   price=money(2)), merge()]
    keys, reference = run(steps)  # U had no event: its state is A's
    assert_same(keys[U], reference)
    profile, behaviour = keys[U].load()
    before = (profile.encode(), behaviour.encode())
    profile.absorb(UserProfile(A), DEDUPE)
    behaviour.absorb(UserBehaviour(), U, RULES)
    assert (profile.encode(), behaviour.encode()) == before


def test_states_written_before_the_merge_existed_still_decode_and_absorb():
    steps = [ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(20)),
             ev(A, EventKind.PURCHASE, 1, order_id="o1", revenue=money(20)),
             ev(A, EventKind.CART_ADD, 2, product_id="P2", price=money(4))]
    keys, _ = run(steps, flush_days=0)
    profile, behaviour = keys[A].load()
    old_profile = orjson.loads(profile.encode())
    del old_profile["recent_order_facts"], old_profile["cart_added"]
    sessions, activity, triggers, pending = orjson.loads(behaviour.encode())
    old = orjson.dumps([sessions, activity[:8], triggers[:4], pending])
    old_a = UserProfile.decode(orjson.dumps(old_profile))
    old_behaviour = UserBehaviour.decode(old)
    assert old_a.row() == profile.row() and list(old_a.recent_order_facts) == [None]
    assert old_behaviour.activity.row(A) == behaviour.activity.row(A)
    assert old_behaviour.activity.order_facts == [None]
    assert (old_behaviour.triggers.last_purchase, old_behaviour.triggers.bought_cart) == (None, None)

    mine = UserProfile(U)
    mine.apply(Event(event_id="x1", kind=EventKind.PURCHASE, name="Order Completed", user_key=U,
                     event_time=T0 + timedelta(minutes=5), received_at=T0, order_id="o1", revenue=money(20)), DEDUPE)
    mine.absorb(old_a, DEDUPE)
    # The order both remember counts once, with the known occurrence's revenue; the one without a
    # time counts as the later (in truth A's came first, so U's did not empty A's cart: the bound).
    assert (mine.orders, mine.revenue, mine.cart_value) == (1, money(20), 0)
    UserBehaviour().absorb(old_behaviour, U, RULES)


# --- the documented bounds -------------------------------------------------------------------------

def test_bound_a_removal_under_one_key_of_a_line_the_other_key_added_is_lost():
    steps = [ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(10), quantity=2), login(1),
             ev(U, EventKind.CART_REMOVE, 2, product_id="P1", quantity=1), merge()]
    keys, reference = run(steps)
    assert_same(keys[U], reference, cart=False, triggers=False)
    assert (profile_row(reference)["cart_value"], profile_row(keys[U])["cart_value"]) == (10, 20)


def test_bound_a_cart_line_added_on_both_sides_of_the_other_keys_purchase_keeps_its_quantity():
    steps = [ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(10)), login(1),
             ev(U, EventKind.PURCHASE, 2, order_id="o1", revenue=money(1)),
             ev(A, EventKind.CART_ADD, 3, product_id="P1", price=money(10)), merge()]
    keys, reference = run(steps, watermark=False)
    assert_same(keys[U], reference, cart=False, triggers=False)
    assert (profile_row(reference)["cart_value"], profile_row(keys[U])["cart_value"]) == (10, 20)
    # Its cart episode opened before the purchase: closed (the later add's episode is not re-opened).
    assert CART in {k for k, _ in reference.fired} and CART not in {k for k, _ in keys[U].fired}


def test_bound_a_repeated_orders_categories_stay_counted():
    line = (ProductLine(product_id="P1", category="shoes"),)
    steps = [ev(A, EventKind.PRODUCT_VIEW, 0, product_id="P2", category="bags"),
             ev(A, EventKind.PURCHASE, 1, order_id="o1", revenue=money(5), products=line), login(2),
             ev(U, EventKind.PURCHASE, 3, order_id="o1", revenue=money(5), products=line), merge()]
    keys, reference = run(steps, flush_days=0)
    assert profile_row(keys[U]) == profile_row(reference)
    got, want = activity_row(keys[U]), activity_row(reference)
    assert (got["frequency"], got["monetary"], got["purchases_1d"]) == (want["frequency"], want["monetary"], 1)
    assert want["favourite_categories"] == ["bags", "shoes"]  # one each: by name
    assert got["favourite_categories"] == ["shoes", "bags"]  # the repeated order's line counted twice
    for row in (got, want):
        del row["favourite_category"], row["favourite_categories"]
    assert got == want


def test_bound_sessions_one_key_sealed_before_the_merge_stay_apart():
    rules = replace(RULES, session_lateness_s=HOUR)
    steps = [ev(A, EventKind.PAGE_VIEW, 0), ev(U, EventKind.PAGE_VIEW, 20),
             ev(U, EventKind.PAGE_VIEW, 200),  # seals U's first visit; A's is still open
             merge()]
    keys, reference = run(steps, rules=rules)
    assert len(reference.sessions) == 2 and len(keys[U].sessions) == 3
    assert sum(s["events"] for s in keys[U].sessions.values()) == 3


def test_bound_cart_activity_of_both_keys_within_one_episode_after_a_key_fired_on_its_own():
    """U's own cart fired (its key alone) before the merge: the in-order fold had one longer episode."""
    steps = [ev(A, EventKind.CART_ADD, 0, product_id="P1", price=money(1)), login(5),
             ev(U, EventKind.CART_ADD, 50, product_id="P2", price=money(2)),
             ev(A, EventKind.CART_ADD, 100, product_id="P3", price=money(3)),
             ev(U, EventKind.PAGE_VIEW, 180), merge()]
    keys, reference = run(steps, watermark=False)
    assert_same(keys[U], reference, triggers=False)
    assert len([k for k, _ in reference.fired if k == CART]) == 1  # opened at 0, all three lines
    assert len([k for k, _ in keys[U].fired if k == CART]) == 3  # A's at 0, U's at 50, A's at 100


# --- the property tests -----------------------------------------------------------------------------

PRODUCTS = ["P1", "P2", "P3", "P4"]
CATEGORIES = ["shoes", "bags", None]


@st.composite
def an_event(draw, key: str, minutes: float, *, removes: bool = True, order_ids=("o1", "o2", "o3")):
    kinds = [EventKind.PAGE_VIEW, EventKind.PRODUCT_VIEW, EventKind.PRODUCT_VIEW, EventKind.CART_ADD,
             EventKind.CART_ADD, EventKind.CHECKOUT, EventKind.PURCHASE, EventKind.PURCHASE, EventKind.REFUND,
             EventKind.CLICK, EventKind.IDENTIFY] + ([EventKind.CART_REMOVE] if removes else [])
    kind = draw(st.sampled_from(kinds))
    fields: dict = {}
    if kind != EventKind.PURCHASE:  # the orders' sessions stay inactivity sessions: one holds each time
        fields["session_id"] = draw(st.sampled_from([None, None, "s1", "s2"]))
    if kind == EventKind.PAGE_VIEW:
        fields["page_url"] = draw(st.sampled_from([None, "https://shop/", "https://shop/sale"]))
        fields["utm_source"] = draw(st.sampled_from([None, "mail"]))
    elif kind in (EventKind.PRODUCT_VIEW, EventKind.CART_ADD, EventKind.CART_REMOVE):
        fields["product_id"] = draw(st.sampled_from(PRODUCTS))
        fields["category"] = draw(st.sampled_from(CATEGORIES))
        fields["quantity"] = draw(st.sampled_from([None, 1, 2]))
        if kind == EventKind.CART_ADD:
            fields["price"] = money(draw(st.sampled_from(["1.5", "4", "10"])))
    elif kind in (EventKind.PURCHASE, EventKind.REFUND):
        fields["order_id"] = draw(st.sampled_from(order_ids))
        fields["revenue"] = money(draw(st.sampled_from(["2.25", "7", "30"])))
    return ev(key, kind, minutes, **fields)


def gaps(size: int):
    """Minutes between events: mostly a visit's, sometimes past the inactivity gap or a trigger's delay."""
    return st.lists(st.one_of(st.integers(1, 12), st.integers(25, 45), st.integers(55, 130)),
                    min_size=size, max_size=size)


@st.composite
def any_split(draw):
    """Events split at random between A and U, merged at a random point (later events of A forwarded)."""
    size = draw(st.integers(1, 24))
    minutes = 0.0
    steps = []
    for gap in draw(gaps(size)):
        minutes += gap + draw(st.sampled_from([0, 0.25, 0.5]))
        steps.append(draw(an_event(draw(st.sampled_from([A, U])), minutes)))
    steps.insert(draw(st.integers(0, size)), merge())
    return steps


def cart_is_exact(steps: list) -> bool:
    """The conditions under which ``UserProfile.absorb`` gives the exact cart (its docstring): before
    the merge, no key removed a product the other added, no order id is on both keys, and each key's
    adds of a product since its own last order are all on one side of the other key's last order (an
    order is the first event of its order id: a repeated one empties no cart)."""
    before = steps[:next(i for i, s in enumerate(steps) if s[0] == "merge")]
    by_key = {key: [s[2] for s in before if s[1] == key] for key in (A, U)}
    added = {key: {e.product_id for e in events if e.kind == EventKind.CART_ADD} for key, events in by_key.items()}
    orders = {key: {e.order_id: e.event_time for e in reversed(events) if e.kind == EventKind.PURCHASE}
              for key, events in by_key.items()}
    if orders[A].keys() & orders[U].keys():
        return False
    for key, other in ((A, U), (U, A)):
        events = by_key[key]
        if any(e.kind == EventKind.CART_REMOVE and e.product_id in added[other] for e in events):
            return False
        bought = list(orders[other].values())
        if not bought:
            continue
        own = list(orders[key].values())
        since = [e for e in events if e.kind == EventKind.CART_ADD and (not own or e.event_time > max(own))]
        for product in {e.product_id for e in since}:
            sides = {e.event_time > max(bought) for e in since if e.product_id == product}
            if len(sides) > 1:
                return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_split())
def test_any_split_of_any_events_gives_the_profile_activity_and_sessions_of_one_key(steps):
    """Exact whatever the split: the profile row (the cart under ``cart_is_exact``), the activity row,
    the sessions table and win-back. Cart and browse episodes of interleaved keys are the documented
    approximation (``Triggers.absorb``): the login journeys below prove them."""
    for watermark in (True, False):
        keys, reference = run(steps, watermark=watermark)
        assert_same(keys[U], reference, cart=cart_is_exact(steps), triggers=False)


@st.composite
def login_journey(draw):
    """The shape the worker sees: A browses; U logs in and goes on for a minute (its own key) until
    the merge record arrives; then every event is U's, some of A's arriving late (forwarded)."""
    before = draw(st.integers(0, 14))
    minutes = 0.0
    steps = []
    for gap in draw(gaps(before)):
        minutes += gap
        steps.append(draw(an_event(A, minutes)))
    minutes += draw(st.integers(1, 200))
    steps.append(login(minutes))
    for _ in range(draw(st.integers(0, 4))):  # U's own key: no removal, no order id of A's
        minutes += draw(st.sampled_from([0.1, 0.2, 0.3]))
        steps.append(draw(an_event(U, minutes, removes=False, order_ids=("u1", "u2"))))
    window = (steps[before][2].event_time.timestamp(), steps[-1][2].event_time.timestamp())
    steps.append(merge())
    after = draw(st.integers(0, 10))
    for gap in draw(gaps(after)):
        minutes += gap
        if before and draw(st.integers(0, 4)) == 0:  # a late one of A's: within the visit before the login
            late = draw(st.integers(1, 10))
            steps.append(draw(an_event(A, max(0.0, window[0] / 60 - T0.timestamp() / 60 - late))))
        steps.append(draw(an_event(draw(st.sampled_from([A, U])), minutes)))
    return steps, window


def due_during(steps: list, window: tuple) -> bool:
    """Whether an episode of A's falls due while U's key goes on alone: then A's key fires it (the
    partition's watermark) where the in-order fold had U's events join or close it first."""
    keys, _ = run(steps[:next(i for i, s in enumerate(steps) if s[0] == "event" and s[1] == U)], flush_days=0)
    if A not in keys:
        return False
    behaviour = keys[A].load()[1]
    lateness = RULES.trigger_lateness_s
    return any(window[0] - lateness < deadline <= window[1] - lateness
               for deadline, _kind, _product in behaviour.triggers.deadlines(RULES.triggers))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(login_journey())
def test_login_journeys_give_exactly_the_state_of_one_key(journey):
    """Everything exact, the triggers fired and closed too, for journeys of the shape the worker sees
    (a merge shortly after the login), unless an episode of A's falls due in the minute U goes on
    alone (``due_during``: then the win-back, profile, activity and sessions are still exact)."""
    steps, window = journey
    exact = not due_during(steps, window)
    for watermark in (True, False):
        keys, reference = run(steps, watermark=watermark)
        assert_same(keys[U], reference, triggers=exact)


def test_session_log_absorb_of_an_empty_log_changes_nothing():
    log = SessionLog()
    assert log.absorb(SessionLog(), 30 * MIN, HOUR) == 0
    assert log.encode() == SessionLog().encode()
    assert Triggers().absorb(Triggers(), U, RULES.triggers, 300) == []
