"""Sessions, rolling windows, lifecycle and triggers: pure logic, event times injected."""

import asyncio
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from spoor.events import Event, EventKind, ProductLine
from spoor.stream_processors.activity import Activity, lifecycle_stage
from spoor.stream_processors.behaviour import AnalyticsRules, UserBehaviour, pack, read_header, unpack
from spoor.stream_processors.behaviour_triggers import TriggerRules, Triggers
from spoor.stream_processors.sessions import SessionLog, inactivity_id

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
MIN = 60.0
DAY = 86400.0
_ids = iter(range(10**9))


def ev(kind: EventKind, minutes: float, **fields) -> Event:
    at = T0 + timedelta(minutes=minutes)
    return Event(event_id=f"e{next(_ids)}", kind=kind, name=kind.value, user_key="u1", event_time=at,
                 received_at=at, **fields)


def at(event: Event) -> float:
    return event.event_time.timestamp()


def sessionise(events, inactivity_s=30 * MIN, lateness_s=6 * 3600.0) -> SessionLog:
    log = SessionLog()
    for e in events:
        assert log.add(e, at(e), inactivity_s, lateness_s)
    return log


def spans(log: SessionLog) -> list:
    return sorted((s.started_at, s.ended_at, s.events) for s in log.sessions)


# --- sessions ---------------------------------------------------------------------------------

def test_inactivity_splits_sessions_at_more_than_30_minutes():
    log = sessionise([ev(EventKind.PAGE_VIEW, m) for m in (0, 10, 40, 71, 101)])
    # 40 -> 71 is 31 minutes apart: a new session; 71 -> 101 is exactly 30: the same one.
    assert [(e - s) / MIN for s, e, _ in spans(log)] == [40, 30]
    assert [n for *_, n in spans(log)] == [3, 2]


def test_out_of_order_events_give_the_same_sessions_as_in_order():
    minutes = [0, 5, 12, 50, 55, 120, 121, 170, 199, 240]
    events = [ev(EventKind.PRODUCT_VIEW, m, product_id=f"p{m}", category="shoes") for m in minutes]
    in_order = sessionise(events)
    shuffled = events[:]
    random.Random(3).shuffle(shuffled)
    assert spans(sessionise(shuffled)) == spans(in_order)
    assert sorted(s.session_id for s in sessionise(shuffled).sessions) == sorted(s.session_id for s in in_order.sessions)


def test_a_late_event_in_a_gap_merges_two_sessions_and_retires_one_id():
    log = sessionise([ev(EventKind.PAGE_VIEW, 0), ev(EventKind.PAGE_VIEW, 50)])
    assert len(log.sessions) == 2
    late = ev(EventKind.PAGE_VIEW, 25)
    assert log.add(late, at(late), 30 * MIN, 6 * 3600)
    assert spans(log) == [(at(late) - 25 * MIN, at(late) + 25 * MIN, 3)]
    assert inactivity_id(at(late) + 25 * MIN) in log.retired_ids
    assert log.sessions[0].session_id == inactivity_id(at(late) - 25 * MIN)


def test_an_earlier_late_event_moves_the_start_and_retires_the_old_id():
    log = sessionise([ev(EventKind.PAGE_VIEW, 30)])
    old_id = log.sessions[0].session_id
    early = ev(EventKind.PAGE_VIEW, 10, page_url="https://shop.example/landing", referrer="https://google.com/")
    log.add(early, at(early), 30 * MIN, 6 * 3600)
    assert log.retired_ids == [old_id]
    assert log.sessions[0].entry[1:] == ["https://shop.example/landing", "https://google.com/"]


def test_events_later_than_the_lateness_bound_are_refused():
    log = sessionise([ev(EventKind.PAGE_VIEW, 0), ev(EventKind.PAGE_VIEW, 600)], lateness_s=3600)
    too_late = ev(EventKind.PAGE_VIEW, 500)  # 100 minutes behind the latest event
    assert not log.add(too_late, at(too_late), 30 * MIN, 3600)
    within = ev(EventKind.PAGE_VIEW, 570)
    assert log.add(within, at(within), 30 * MIN, 3600)
    assert [n for *_, n in spans(log)] == [2]  # the session of minute 0 is sealed and dropped


def test_client_session_ids_are_honoured_over_gaps_and_kept_apart():
    events = [ev(EventKind.PRODUCT_VIEW, 0, session_id="a", category="tv"),
              ev(EventKind.PRODUCT_VIEW, 5, session_id="b"),
              ev(EventKind.CART_ADD, 90, session_id="a", category="tv", product_id="p1"),
              ev(EventKind.PURCHASE, 95, session_id="a", revenue=Decimal("9.5"),
                 products=(ProductLine(product_id="p1", category="tv"),))]
    log = sessionise(events)
    by_id = {s.session_id: s for s in log.sessions}
    assert set(by_id) == {"a", "b"}
    a = by_id["a"]
    assert (a.ended_at - a.started_at) / MIN == 95
    assert (a.events, a.product_views, a.cart_adds, a.purchases, a.revenue) == (3, 1, 1, 1, "9.5")
    assert (a.view_categories, a.cart_categories, a.purchase_categories) == (["tv"], ["tv"], ["tv"])


def test_entry_page_referrer_and_campaign_come_from_the_earliest_event():
    log = sessionise([
        ev(EventKind.PAGE_VIEW, 3, page_url="https://s/2", referrer="https://s/1"),
        ev(EventKind.PAGE_VIEW, 1, page_url="https://s/1", referrer="https://news.example/a",
           utm_source="newsletter", utm_campaign="spring", utm_medium="email"),
        ev(EventKind.PAGE_VIEW, 2, utm_source="other", utm_campaign="x")])
    session = log.sessions[0]
    assert session.entry[1:] == ["https://s/1", "https://news.example/a"]
    assert session.campaign[1:] == ["newsletter", "spring", "email"]


def test_session_log_round_trips_through_its_encoding():
    log = sessionise([ev(EventKind.PAGE_VIEW, 0, page_url="https://s/"), ev(EventKind.CHECKOUT, 40, session_id="c")])
    assert SessionLog.decode(log.encode()).encode() == log.encode()


# --- rolling windows and lifecycle -------------------------------------------------------------

def test_windows_count_calendar_days_up_to_as_of():
    activity = Activity()
    for day, kind, revenue in [(0, EventKind.PURCHASE, "10"), (-3, EventKind.PURCHASE, "5"),
                               (-20, EventKind.PRODUCT_VIEW, None), (-40, EventKind.PURCHASE, "7")]:
        e = ev(kind, day * 1440, revenue=Decimal(revenue) if revenue else None, category="shoes")
        activity.add(e, at(e))
    row = activity.row("u1")
    assert (row["purchases_1d"], row["purchases_7d"], row["purchases_30d"]) == (1, 2, 2)
    assert (row["revenue_1d"], row["revenue_7d"], row["revenue_30d"]) == (Decimal(10), Decimal(15), Decimal(15))
    assert row["product_views_30d"] == 1 and row["product_views_7d"] == 0
    assert (row["frequency"], row["monetary"], row["recency_days"]) == (3, Decimal(22), 0)
    assert row["as_of"] == T0


def test_favourite_categories_rank_by_interactions_then_name():
    activity = Activity()
    for category, n in [("bags", 2), ("shoes", 3), ("toys", 2), ("home", 1)]:
        for _ in range(n):
            e = ev(EventKind.PRODUCT_VIEW, 0, category=category)
            activity.add(e, at(e))
    row = activity.row("u1")
    assert row["favourite_categories"] == ["shoes", "bags", "toys"]
    assert row["favourite_category"] == "shoes"


def test_lifecycle_thresholds():
    first, last = 0.0, 40 * DAY
    assert lifecycle_stage(35 * DAY, 35 * DAY, 40 * DAY) == "new"
    assert lifecycle_stage(first, last, last + 29 * DAY) == "active"
    assert lifecycle_stage(first, last, last + 30 * DAY) == "at_risk"
    assert lifecycle_stage(first, last, last + 90 * DAY) == "dormant"
    assert lifecycle_stage(first, last, last + 180 * DAY) == "churned"


def test_lifecycle_refreshes_when_the_watermark_passes_a_threshold():
    behaviour = UserBehaviour()
    rules = AnalyticsRules(trigger_lateness_s=0)
    first = ev(EventKind.PAGE_VIEW, 0)
    behaviour.apply("u1", first, rules)
    assert behaviour.activity.row("u1")["lifecycle_stage"] == "new"
    behaviour.fire_due("u1", at(first) + 95 * DAY, rules)
    row = behaviour.activity.row("u1")
    assert row["lifecycle_stage"] == "dormant"
    assert row["as_of"] == first.event_time + timedelta(days=90)


# --- triggers ------------------------------------------------------------------------------------

RULES = TriggerRules(cart_delay_s=3600, browse_views=3, browse_delay_s=1800, win_back_s=30 * DAY)


def fire(triggers: Triggers, events, now_minutes: float) -> list[dict]:
    for e in events:
        triggers.observe(e, at(e))
    return triggers.fire_due("u1", T0.timestamp() + now_minutes * MIN, RULES)


def test_cart_abandonment_fires_once_at_the_deadline():
    triggers = Triggers()
    adds = [ev(EventKind.CART_ADD, 0, product_id="p1", price=Decimal("10"), quantity=2),
            ev(EventKind.CART_ADD, 20, product_id="p2", price=Decimal("5"))]
    assert fire(triggers, adds, 79) == []
    fired = fire(triggers, [], 80)
    assert [t["kind"] for t in fired] == ["cart_abandonment"]
    cart = fired[0]
    assert cart["trigger_id"] == "cart_abandonment:u1:20260302T100000.000Z"
    assert cart["fired_at"] == "2026-03-02T11:20:00Z"
    assert cart["details"]["cart_value"] == "25"
    assert [i["product_id"] for i in cart["details"]["items"]] == ["p1", "p2"]
    assert fire(triggers, [], 500) == []  # once per episode


def test_an_order_within_the_delay_closes_the_cart_episode():
    triggers = Triggers()
    events = [ev(EventKind.CART_ADD, 0, product_id="p1"), ev(EventKind.PURCHASE, 30, revenue=Decimal(1))]
    assert [t["kind"] for t in fire(triggers, events, 300)] == []


def test_emptying_the_cart_closes_the_episode_and_a_new_add_opens_another():
    triggers = Triggers()
    events = [ev(EventKind.CART_ADD, 0, product_id="p1"), ev(EventKind.CART_REMOVE, 5, product_id="p1"),
              ev(EventKind.CART_ADD, 10, product_id="p2")]
    fired = fire(triggers, events, 100)
    assert [t["episode"] for t in fired] == ["20260302T101000.000Z"]


def test_browse_abandonment_needs_enough_views_and_no_cart():
    triggers = Triggers()
    views = [ev(EventKind.PRODUCT_VIEW, m, product_id="p1", category="tv") for m in (0, 5, 9)]
    views += [ev(EventKind.PRODUCT_VIEW, m, product_id="p2") for m in (1, 2, 3)]
    views += [ev(EventKind.CART_ADD, 4, product_id="p2")]  # p2 was carted: no browse trigger for it
    fired = [t for t in fire(triggers, views, 39) if t["kind"] == "browse_abandonment"]
    assert [(t["details"]["product_id"], t["details"]["views"], t["fired_at"]) for t in fired] == [
        ("p1", 3, "2026-03-02T10:39:00Z")]
    assert fired[0]["episode"] == "p1@20260302T100000.000Z"


def test_win_back_fires_once_per_inactivity_gap():
    triggers = Triggers()
    assert fire(triggers, [ev(EventKind.PAGE_VIEW, 0)], 30 * 1440 - 1) == []
    fired = fire(triggers, [], 30 * 1440)
    assert [(t["kind"], t["episode"]) for t in fired] == [("win_back", "20260302T100000.000Z")]
    assert fire(triggers, [], 90 * 1440) == []
    back = ev(EventKind.PAGE_VIEW, 100 * 1440)
    assert [t["kind"] for t in fire(triggers, [back], 130 * 1440)] == ["win_back"]


def test_triggers_do_not_depend_on_batching():
    """Fired by the user's own later event or by the watermark: the same triggers either way."""
    rules = AnalyticsRules(trigger_lateness_s=300, triggers=RULES)
    events = [ev(EventKind.CART_ADD, 0, product_id="p1"), ev(EventKind.PAGE_VIEW, 200),
              ev(EventKind.CART_ADD, 210, product_id="p3"), ev(EventKind.PURCHASE, 240, revenue=Decimal(3))]
    own = UserBehaviour()
    for e in events:
        own.apply("u1", e, rules)
    by_watermark = UserBehaviour()
    for e in events:
        by_watermark.fire_due("u1", at(e) - 300, rules)  # another user's event advanced the watermark
        by_watermark.apply("u1", e, rules)
    assert own.pending == by_watermark.pending
    assert [t["kind"] for t in own.pending] == ["cart_abandonment"]


def test_table_value_packs_profile_and_behaviour_with_a_readable_header():
    behaviour = UserBehaviour()
    behaviour.apply("u1", ev(EventKind.CART_ADD, 0, product_id="p1"), AnalyticsRules())
    behaviour.pending.append({"trigger_id": "x"})
    raw = pack(b'{"user_key":"u1"}', behaviour, 123.5)
    assert read_header(raw) == (123.5, 1)
    profile_json, behaviour_json = unpack(raw)
    assert profile_json == b'{"user_key":"u1"}'
    assert UserBehaviour.decode(behaviour_json).encode() == behaviour.encode()
    assert unpack(b'{"user_key":"u1"}') == (b'{"user_key":"u1"}', None)


def test_a_session_dropped_in_the_same_fold_is_still_written_and_kept_for_redelivery():
    log = SessionLog()
    first = ev(EventKind.PAGE_VIEW, 0)
    log.add(first, at(first), 30 * MIN, 3600)
    encoded = SessionLog.decode(log.encode())  # a new batch starts from the stored state
    second = ev(EventKind.PAGE_VIEW, 10)
    encoded.add(second, at(second), 30 * MIN, 3600)
    later = ev(EventKind.PAGE_VIEW, 300)  # seals the first session (more than lateness + gap behind)
    encoded.add(later, at(later), 30 * MIN, 3600)
    assert [s.started_at for s in encoded.sessions] == [at(later)]
    written = sorted((s.started_at, s.events) for s in encoded.to_write(everything=False))
    assert written == [(at(first), 2), (at(later), 1)]  # the first one's last change is not lost
    fresh = SessionLog.decode(encoded.encode())
    assert fresh.to_write(everything=False) == []
    assert sorted((s.started_at, s.events) for s in fresh.to_write(everything=True)) == written


# --- the tracker's watermarks and timer index (a dict stands in for the Faust table) -----------

def tracker_with(clock: list, idle_advance_s: float):
    from spoor.stream_processors.analytics_tracker import AnalyticsTracker

    async def send(_triggers):
        raise AssertionError("not called here")

    return AnalyticsTracker(AnalyticsRules(trigger_lateness_s=300, triggers=RULES), 4, send,
                            idle_advance_s=idle_advance_s, clock=lambda: clock[0])


def fold_one(tracker, table: dict, event: Event) -> None:
    key = event.user_key.encode()
    stored = table.get(key)
    behaviour_json = unpack(stored)[1] if stored else None
    table[key] = tracker.fold(event.user_key, b'{"user_key":"u1"}', behaviour_json, [event], [event])


def test_timer_index_fires_a_user_when_another_users_events_move_the_watermark():
    from spoor.stream_processors.rocksdb_store import key_partition
    tracker, table = tracker_with([0.0], 0), {}
    fold_one(tracker, table, ev(EventKind.CART_ADD, 0, product_id="p1"))
    asyncio.run(tracker.advance(table, {"u1"}))
    assert tracker.take_output().triggers == []
    # Another user on the same partition, 65 minutes later: 60 min delay + 5 min lateness passed.
    other = next(f"o{i}" for i in range(1000) if key_partition(f"o{i}".encode(), 4) == key_partition(b"u1", 4))
    later = Event(**{**ev(EventKind.PAGE_VIEW, 65).model_dump(), "user_key": other})
    fold_one(tracker, table, later)
    asyncio.run(tracker.advance(table, {other}))
    fired = tracker.take_output().triggers
    assert [(t["kind"], t["user_key"]) for t in fired] == [("cart_abandonment", "u1")]
    assert read_header(table[b"u1"])[1] == 1  # pending until delivered
    tracker.delivered_ok(type("Out", (), {"triggers": fired})())
    asyncio.run(tracker.advance(table, set()))
    assert read_header(table[b"u1"])[1] == 0  # the next batch drops it from the state


def test_idle_partitions_advance_with_the_injected_clock_only_when_enabled():
    for idle_advance_s, expected in [(0, []), (60, ["cart_abandonment"])]:
        clock = [1000.0]
        tracker, table = tracker_with(clock, idle_advance_s), {}
        fold_one(tracker, table, ev(EventKind.CART_ADD, 0, product_id="p1"))
        asyncio.run(tracker.advance(table, {"u1"}))
        tracker.take_output()
        clock[0] += 3600 + 299  # one second short of the deadline plus the lateness
        asyncio.run(tracker.advance(table, set()))
        assert tracker.take_output().triggers == []
        clock[0] += 1
        asyncio.run(tracker.advance(table, set()))
        assert [t["kind"] for t in tracker.take_output().triggers] == expected


def due_carts(tracker, table: dict, users: int) -> None:
    """``users`` users on every partition, each with a cart 60 minutes from abandonment."""
    for i in range(users):
        cart = Event(**{**ev(EventKind.CART_ADD, 0, product_id="p1").model_dump(), "user_key": f"c{i}"})
        fold_one(tracker, table, cart)
    tracker.take_output()


def test_a_large_trigger_catch_up_lets_other_tasks_run_and_fires_every_user():
    from spoor.stream_processors.rocksdb_store import key_partition
    tracker, table = tracker_with([0.0], 0), {}
    due_carts(tracker, table, 2000)
    for partition in range(4):  # one user per partition, two hours later: every cart is due
        late = next(f"l{i}" for i in range(1000) if key_partition(f"l{i}".encode(), 4) == partition)
        fold_one(tracker, table, Event(**{**ev(EventKind.PAGE_VIEW, 120).model_dump(), "user_key": late}))

    async def catch_up_beside_a_ticker() -> int:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        beside = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        ticks = 0
        await tracker.advance(table, set())
        beside.cancel()
        return ticks

    ticks = asyncio.run(catch_up_beside_a_ticker())
    fired = tracker.take_output().triggers
    assert sorted(t["user_key"] for t in fired) == sorted(f"c{i}" for i in range(2000))
    assert ticks >= 2000 // 200 - 1  # the loop ran other tasks all along the catch-up


def test_a_rebalance_during_the_index_rebuild_stops_reading_and_leaves_the_index_stale():
    from spoor.stream_processors import analytics_tracker
    tracker = tracker_with([0.0], 0)

    class RebalancingTable(dict):
        """Like Faust's store: reading on after a rebalance changed its databases raises."""
        def items(self):
            generation = tracker.generation
            for item in super().items():
                if tracker.generation != generation:
                    raise RuntimeError("dictionary changed size during iteration")
                yield item

    table = RebalancingTable()
    due_carts(tracker, table, analytics_tracker.YIELD_EVERY_KEYS + 10)

    async def rebuild(rebalance_meanwhile: bool) -> None:
        tracker.index_stale = True
        if rebalance_meanwhile:
            asyncio.get_running_loop().call_soon(tracker.reset)  # runs at the rebuild's first yield
        await tracker.advance(table, set())

    asyncio.run(rebuild(rebalance_meanwhile=True))
    assert tracker.index_stale  # the next batch reads the table again
    asyncio.run(rebuild(rebalance_meanwhile=False))
    assert not tracker.index_stale
    assert len(tracker.scheduled) == analytics_tracker.YIELD_EVERY_KEYS + 10


def test_refunds_are_net_in_windows_and_monetary_and_a_repeated_order_id_counts_once():
    behaviour = UserBehaviour()
    rules = AnalyticsRules()
    order = ev(EventKind.PURCHASE, 0, order_id="o1", revenue=Decimal("50"))
    reloaded = ev(EventKind.PURCHASE, 1, order_id="o1", revenue=Decimal("50"))  # thank-you page reloaded
    refund = Event(**{**ev(EventKind.PURCHASE, 2).model_dump(), "kind": EventKind.REFUND, "revenue": Decimal("20")})
    for event in (order, reloaded, refund):
        behaviour.apply("u1", event, rules)
    row = behaviour.activity.row("u1")
    assert (row["frequency"], row["monetary"], row["purchases_1d"], row["revenue_1d"]) == (1, 30, 1, 30)
    session = behaviour.sessions.sessions[0]
    assert (session.events, session.purchases, session.revenue) == (3, 1, "50")


def test_every_session_a_fold_creates_and_drops_is_written():
    """A replay can hold months of one customer in one batch: each session must still get its row."""
    log = SessionLog()
    days = [ev(EventKind.PURCHASE, d * 1440, revenue=Decimal(1)) for d in range(10)]
    for e in days:
        log.add(e, at(e), 30 * MIN, 6 * 3600)
    assert len(log.sessions) == 1
    assert sorted(s.started_at for s in log.to_write(everything=False)) == [at(e) for e in days]
    again = SessionLog.decode(log.encode())  # after a crash, the redelivered batch rewrites them all
    assert sorted(s.started_at for s in again.to_write(everything=True)) == [at(e) for e in days]
