"""Segment membership on the real PostgreSQL: compiled SQL, RFM, references, incremental vs full,
history and sizes, the enter/exit topic."""

from datetime import datetime, timedelta, timezone

import orjson
import pytest
from kafka import KafkaConsumer
from sqlalchemy import select, text

from spoor.segments import membership
from spoor.segments.membership import SegmentStore
from spoor.segments.rfm import GROUPS
from spoor.segments.segment_language import SegmentDefinitionError, parse_segment
from spoor.storage.segment_tables import SegmentTransition
from spoor.topics import create_producer, create_segment_topics
from tests.support.local_stack import run_id
from tests.support.segments_data import profile, put_activity, put_events, put_profiles

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store(engine):
    return SegmentStore(engine)


def define(store, text_or_dict, status="active"):
    spec = parse_segment(text_or_dict)
    store.save(spec, status=status)
    return spec


def test_field_event_and_reference_conditions(engine, store):
    put_profiles(engine, [
        profile("seg-a", NOW, orders=3, revenue="300", last_purchase_days=70),
        profile("seg-b", NOW, orders=1, revenue="20", last_purchase_days=10),
        profile("seg-c", NOW),
    ])
    put_activity(engine, [{"user_key": "seg-a", "as_of": NOW, "purchases_30d": 2, "favourite_category": "shoes"},
                          {"user_key": "seg-b", "as_of": NOW, "purchases_30d": 5, "favourite_category": "hats"}])
    put_events(engine, [
        {"event_id": "e1", "user_key": "seg-c", "kind": "cart_add", "name": "Product Added",
         "event_time": NOW - timedelta(hours=2)},
        {"event_id": "e2", "user_key": "seg-b", "kind": "cart_add", "name": "product_added",
         "event_time": NOW - timedelta(hours=3)},
        {"event_id": "e3", "user_key": "seg-b", "kind": "purchase", "name": "Order Completed",
         "event_time": NOW - timedelta(hours=1)},
        {"event_id": "e4", "user_key": "seg-a", "kind": "cart_add", "name": "Product Added",
         "event_time": NOW - timedelta(hours=30)},
        {"event_id": "e-again-c", "user_key": "seg-c", "kind": "cart_add", "name": "Product Added",
         "event_time": NOW - timedelta(hours=40)},
        {"event_id": "e-again-a", "user_key": "seg-a", "kind": "cart_add", "name": "Product Added",
         "event_time": NOW - timedelta(hours=35)},
    ])
    shoes = define(store, {"name": "shoe_fans_lapsed", "where": {"all": [
        "purchases_30d >= 2", 'favourite_category == "shoes"', "days_since_last_purchase > 60"]}})
    abandoners = define(store, {"name": "t_abandoners",
                                "where": 'did "Product Added" in last 24h and not "Order Completed"'})
    either = define(store, {"name": "t_either", "where": {"any": [{"segment": "shoe_fans_lapsed"},
                                                                   {"segment": "t_abandoners"}]}})
    nobody_else = define(store, {"name": "t_not_either", "where": {"not": {"segment": "t_either"}}})
    # Event conditions with their own windows, one of them inside a referenced segment: each keeps
    # its window in the single scan of the user's events.
    repeat_adders = define(store, {"name": "t_repeat_adders", "where": {"all": [
        {"did": "Product Added", "within": "48h", "at_least": 2}, {"segment": "t_abandoners"}]}})
    specs = store.specs()
    assert membership.compute_members(engine, shoes, specs, NOW) == {"seg-a"}
    assert membership.compute_members(engine, abandoners, specs, NOW) == {"seg-c"}
    assert membership.compute_members(engine, either, specs, NOW) == {"seg-a", "seg-c"}
    assert membership.compute_members(engine, nobody_else, specs, NOW) == {"seg-b"}
    # seg-c added 2 h and 40 h ago; seg-a 30 h and 35 h ago: two in 48 h, but none in the last 24 h.
    assert membership.compute_members(engine, repeat_adders, specs, NOW) == {"seg-c"}
    assert membership.compute_members(engine, repeat_adders, specs, NOW + timedelta(hours=7)) == {"seg-c"}
    assert membership.compute_members(engine, repeat_adders, specs, NOW + timedelta(hours=9)) == set()  # 40 h -> 49 h
    # Evaluated a day later, the cart add is out of the 24 h window.
    assert membership.compute_members(engine, abandoners, specs, NOW + timedelta(days=1)) == set()
    preview = membership.preview(engine, either, specs, NOW, sample=1)
    assert preview["size"] == 2 and preview["sample"] == ["seg-a"]


def test_reference_cycles_and_unknown_references_are_refused(store):
    define(store, {"name": "cyc_a", "where": "orders >= 1"})
    define(store, {"name": "cyc_b", "where": {"segment": "cyc_a"}})
    with pytest.raises(SegmentDefinitionError, match="cycle: cyc_a -> cyc_b -> cyc_a"):
        define(store, {"name": "cyc_a", "where": {"segment": "cyc_b"}})
    with pytest.raises(SegmentDefinitionError, match="unknown segment 'nope'"):
        define(store, {"name": "dangling", "where": {"segment": "nope"}})
    assert store.get("cyc_a").where.field == "orders"  # the refused definition was not saved


def test_injection_attempts_reach_sql_only_as_parameters(engine, store):
    hostile = "shoes'; DROP TABLE user_profiles; --"
    spec = define(store, {"name": "t_hostile", "where": {"any": [
        {"field": "favourite_category", "op": "==", "value": hostile},
        {"field": "favourite_category", "op": "in", "value": [hostile, "x' OR '1'='1"]},
        {"did": "Order Completed'); DELETE FROM events; --", "within": "7d"}]}}, status="draft")
    assert membership.compute_members(engine, spec, store.specs(), NOW) == set()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM user_profiles")).scalar_one() >= 3
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() >= 4
    with pytest.raises(SegmentDefinitionError, match="unknown field"):
        parse_segment({"name": "x", "where": {"field": "orders; DROP TABLE events", "op": "==", "value": 1}})
    with pytest.raises(SegmentDefinitionError, match="unknown field"):
        parse_segment({"name": "x", "where": {"field": "user_profiles.orders", "op": "==", "value": 1}})


def test_rfm_groups_and_scores_come_from_the_user_rfm_view(engine, store):
    store.install_builtins()
    put_profiles(engine, [profile(f"rfm-{i}", NOW, orders=i, revenue=str(100 * i), last_purchase_days=60 - 5 * i,
                                  user_id=f"customer-{i}") for i in range(1, 11)]
                 + [profile(f"rfm-twin-{t}", NOW, orders=5, revenue="150", last_purchase_days=33,
                            user_id=f"twin-{t}") for t in "ab"])
    specs = store.specs()
    groups = {g: membership.compute_members(engine, specs[f"rfm_{g}"], specs, NOW) for g in GROUPS}
    with engine.connect() as conn:
        view = {row.user_key: row for row in conn.execute(text("SELECT * FROM user_rfm"))}
    # Customers are identified buyers: seg-a and seg-b bought anonymously, so they have no scores.
    customers = {f"rfm-{i}" for i in range(1, 11)} | {"rfm-twin-a", "rfm-twin-b"}
    assert set(view) == customers
    assert groups == {g: {k for k, row in view.items() if row.rfm_group == g} for g in GROUPS}
    assert sum(len(members) for members in groups.values()) == len(customers)  # a partition
    assert {"rfm-10", "rfm-9"} <= groups["champions"] and "rfm-1" in groups["lost"]
    # Equal values, equal scores: 4 of the 12 have fewer than 5 orders, so all three with 5 orders
    # get 1 + 5 * 4 // 12 = 2 (NTILE would have split them).
    assert [view[k].f_score for k in ("rfm-1", "rfm-5", "rfm-twin-a", "rfm-twin-b", "rfm-10")] == [1, 2, 2, 2, 5]
    twins = [(r.r_score, r.f_score, r.m_score, r.rfm_group) for r in (view["rfm-twin-a"], view["rfm-twin-b"])]
    assert twins[0] == twins[1]
    frequency_two = define(store, {"name": "t_frequency_two", "where": "frequency_score == 2"}, status="draft")
    assert membership.compute_members(engine, frequency_two, store.specs(), NOW) == {
        "rfm-4", "rfm-5", "rfm-twin-a", "rfm-twin-b"}


def test_incremental_and_full_recompute_agree_and_history_is_kept(engine, store):
    specs = store.specs()
    names = ["shoe_fans_lapsed", "t_abandoners", "t_either", "rfm_champions", "lifecycle_prospect"]
    first = NOW + timedelta(minutes=1)
    membership.full_recompute(engine, first, names)
    before = {n: {m["user_key"] for m in membership.members(engine, n, 1000)} for n in names}
    assert before["t_abandoners"] == {"seg-c"}

    # Profiles change: seg-c buys (leaves abandoners and prospects), a new user abandons a cart,
    # and a big spender appears (moves everyone's RFM quintiles).
    second = NOW + timedelta(minutes=10)
    put_profiles(engine, [profile("seg-c", NOW, orders=1, revenue="10", last_purchase_days=0.001),
                          profile("seg-new", NOW),
                          profile("whale", NOW, orders=50, revenue="9000", last_purchase_days=0.01,
                                  user_id="whale")])
    put_events(engine, [
        {"event_id": "e5", "user_key": "seg-c", "kind": "purchase", "name": "Order Completed",
         "event_time": NOW + timedelta(minutes=5)},
        {"event_id": "e6", "user_key": "seg-new", "kind": "cart_add", "name": "Product Added",
         "event_time": NOW + timedelta(minutes=5)}])
    for name in names:
        store.set_status(name, "active")
    # A pass that defers population-wide segments (the runner paces them) leaves RFM ones alone.
    deferred = membership.incremental_pass(engine, second, overlap_s=0, cursor="deferred", refresh_population=False)
    assert "t_abandoners" in deferred["segments"] and "rfm_champions" not in deferred["segments"]
    assert "whale" not in {m["user_key"] for m in membership.members(engine, "rfm_champions", 1000)}
    statements: list[float] = []  # the runner idles after each, in proportion (segments/segment_runner.py)
    result = membership.incremental_pass(engine, second, overlap_s=0, pace=statements.append)
    assert result["changed_users"] >= 3
    assert len(statements) == len(result["segments"]) and all(s >= 0 for s in statements)  # under 1,000 users each
    incremental = {n: {m["user_key"] for m in membership.members(engine, n, 1000)} for n in names}
    full = {n: membership.compute_members(engine, specs[n], specs, second) for n in names}
    assert incremental == full
    assert incremental["t_abandoners"] == {"seg-new"}
    assert "whale" in incremental["rfm_champions"]

    # A second full recompute at the same instant changes nothing.
    assert all(v == (0, 0) for v in membership.full_recompute(engine, second, names).values())

    history = membership.history(engine, "t_abandoners")
    assert sorted((h["user_key"], h["change"], h["at"]) for h in history) == [
        ("seg-c", "enter", first), ("seg-c", "exit", second), ("seg-new", "enter", second)]
    sizes = membership.sizes(engine, "t_abandoners", NOW, second, timedelta(minutes=1))
    assert sizes[0]["size"] == 0 and sizes[1]["size"] == 1 and sizes[-1]["size"] == 1
    assert len(sizes) == 11
    user = membership.user_segments(engine, "seg-c")
    assert [h["change"] for h in user["history"] if h["segment"] == "t_abandoners"] == ["enter", "exit"]


def test_transitions_are_published_once_to_the_segments_topic(engine, test_settings):
    settings = test_settings.model_copy(update={"segments_topic": f"spoor.test-{run_id(8)}.segments"})
    create_segment_topics(settings)
    producer = create_producer(settings, "test-segments")
    with engine.connect() as conn:
        expected = conn.execute(select(SegmentTransition.id).where(SegmentTransition.published_at.is_(None))).all()
    assert len(expected) > 7
    # Out of time after the first chunk: one chunk; with time left: chunk after chunk to the end.
    sent = membership.publish_backlog(engine, producer, settings.segments_topic, budget_s=0, chunk=7)
    assert sent == 7
    chunks: list[float] = []
    sent += membership.publish_backlog(engine, producer, settings.segments_topic, budget_s=60, chunk=7,
                                       pace=chunks.append)
    assert len(chunks) == (len(expected) - 7) // 7 + 1  # every chunk, and the last one that came up short
    producer.close()
    assert sent == len(expected)
    assert membership.publish_transitions(engine, create_producer(settings, "t2"), settings.segments_topic) == 0
    consumer = KafkaConsumer(settings.segments_topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    messages = [orjson.loads(m.value) for m in consumer]
    consumer.close()
    assert sorted(m["transition_id"] for m in messages) == sorted(r.id for r in expected)
    assert {m["change"] for m in messages} == {"enter", "exit"}


def test_a_change_committed_after_a_pass_that_started_later_is_still_picked_up(engine):
    """updated_at is its transaction's start: a writer still open during a pass commits rows stamped
    before that pass; the next pass must look back to them, even with no overlap configured."""
    put_profiles(engine, [profile("late-writer", NOW)])
    membership.incremental_pass(engine, NOW, overlap_s=0, cursor="late")  # the cursor is now "just now"
    writer = engine.connect()
    transaction = writer.begin()
    writer.execute(text("UPDATE user_profiles SET orders = orders + 1, updated_at = now() "
                        "WHERE user_key = 'late-writer'"))
    during = membership.incremental_pass(engine, NOW, overlap_s=0, cursor="late")
    assert during["changed_users"] == 0  # not committed yet: invisible to this pass
    transaction.commit()
    writer.close()
    after = membership.incremental_pass(engine, NOW, overlap_s=0, cursor="late")
    assert after["changed_users"] == 1


def test_one_scan_of_changes_serves_passes_on_cursors_at_different_points(engine):
    """``Changes``: the segments runner's one scan a turn gives each cursor the users ``changed_users`` gives
    it, and its ``next_since``; a change committed after the windows were taken waits for the next turn."""
    put_profiles(engine, [profile("scan-old", NOW)])
    membership.incremental_pass(engine, NOW, overlap_s=0, cursor="scan-behind")  # past scan-old
    put_profiles(engine, [profile("scan-new", NOW)])
    put_activity(engine, [{"user_key": "scan-new-activity", "as_of": NOW, "purchases_30d": 1}])
    membership.incremental_pass(engine, NOW, overlap_s=0, cursor="scan-ahead")  # past all three
    put_profiles(engine, [profile("scan-newest", NOW)])
    changes = membership.Changes(engine, ("scan-behind", "scan-ahead", "scan-never"), overlap_s=0)
    put_profiles(engine, [profile("scan-after", NOW)])  # committed after the windows were taken
    with engine.connect() as conn:
        windows = {cursor: membership.pass_window(conn, cursor, 0)[0] for cursor in changes.windows}
    for cursor, since in windows.items():
        keys, window_since, next_since = changes.window(cursor)
        expected = set(membership.changed_users(engine, since)) - {"scan-after"}
        assert set(keys) == expected and keys == sorted(keys)
        assert window_since == since and next_since <= datetime.now(timezone.utc)
    assert {"scan-new", "scan-new-activity", "scan-newest"} <= set(changes.window("scan-behind")[0])
    assert "scan-old" not in changes.window("scan-behind")[0]
    assert "scan-newest" in changes.window("scan-ahead")[0] and "scan-new" not in changes.window("scan-ahead")[0]
    assert "scan-old" in changes.window("scan-never")[0]
    result = membership.incremental_pass(engine, NOW, overlap_s=0, cursor="scan-ahead", changes=changes)
    assert result["changed_users"] == len(changes.window("scan-ahead")[0])
    after = membership.incremental_pass(engine, NOW, overlap_s=0, cursor="scan-ahead")
    assert after["changed_users"] == 1  # scan-after, left for the next turn
