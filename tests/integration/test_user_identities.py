"""One shopper, one profile, in PostgreSQL (storage/identities.py, docs/identity.md): an id's rows move to
its user in every table with a user_key, lookups by any id find the one profile, erasure takes the
whole graph. Real PostgreSQL (and Kafka for erasure's records, with no worker running)."""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import orjson
import psycopg2.errors
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import text

from spoor.cli.admin_api import create_api, user_view
from spoor.privacy.erasure import erase_user
from spoor.storage.identities import TABLES_WITH_USER_KEY, canonical_key, erasable_ids, ids_of, move_rows, record_links
from spoor.storage.writers import StreamWriter
from spoor.topics import partition_for
from tests.support.local_stack import REPO
from tests.support.segments_data import profile, put_events, put_profiles

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
TOKEN = "test-admin-token"


def link(linked_id: str, user_key: str, status: str = "merged", kind: str = "anonymous", reason=None,
         at: datetime = NOW) -> dict:
    return {"id": linked_id, "user_key": user_key, "kind": kind, "status": status, "reason": reason, "linked_at": at}


def put_session(conn, user_key: str, session_id: str, events: int) -> None:
    conn.execute(text(
        "INSERT INTO sessions (user_key, session_id, opened_at, client_session, started_at, ended_at, duration_s,"
        " events, page_views, product_views, cart_adds, checkouts, purchases, revenue, reached_cart, reached_checkout,"
        " reached_purchase) VALUES (:u, :s, :t, true, :t, :t, 0, :n, :n, 0, 0, 0, 0, 0, false, false, false)"),
        {"u": user_key, "s": session_id, "t": NOW, "n": events})


def put_everything(engine, user_key: str, tag: str) -> None:
    """One or more rows of ``user_key`` in every table the stream, segments and campaigns write."""
    put_profiles(engine, [profile(user_key, NOW, page_views=3, events=3)])
    put_events(engine, [{"event_id": f"{tag}-e{i}", "user_key": user_key, "kind": "page", "name": "Page Viewed",
                         "event_time": NOW - timedelta(minutes=i)} for i in range(3)])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO user_activity (user_key, as_of) VALUES (:u, :t)"), {"u": user_key, "t": NOW})
        put_session(conn, user_key, "s-shared", 2)
        put_session(conn, user_key, f"s-{tag}", 1)
        conn.execute(text(
            "INSERT INTO behaviour_triggers (trigger_id, kind, user_key, episode, fired_at) "
            "VALUES (:id, 'cart_abandonment', :u, :ep, :t)"),
            {"id": f"cart_abandonment:{user_key}:{tag}", "u": user_key, "ep": tag, "t": NOW})
        for segment in ("both", f"only-{tag}"):
            conn.execute(text("INSERT INTO segments (name, definition, status) VALUES (:n, '{}', 'active') "
                              "ON CONFLICT DO NOTHING"), {"n": segment})
            conn.execute(text("INSERT INTO segment_members (segment, user_key, entered_at) VALUES (:s, :u, :t)"),
                         {"s": segment, "u": user_key, "t": NOW - timedelta(days=1)})
            conn.execute(text("INSERT INTO segment_transitions (segment, user_key, change, at, published_at) "
                              "VALUES (:s, :u, 'enter', :t, :t)"), {"s": segment, "u": user_key,
                                                                      "t": NOW - timedelta(days=1)})
        conn.execute(text("INSERT INTO campaigns (name, definition, status) VALUES ('rescue', '{}', 'active') "
                          "ON CONFLICT DO NOTHING"))
        for episode in ("shared-episode", f"episode-{tag}"):
            conn.execute(text(
                "INSERT INTO campaign_deliveries (campaign, user_key, episode, idempotency_key, triggered_at, due_at,"
                " status, attempts, next_attempt_at) VALUES ('rescue', :u, :ep, :k, :t, :t, 'sent', 1, :t)"),
                {"u": user_key, "ep": episode, "k": f"{tag}-{episode}", "t": NOW})


def rows_of(conn, user_key: str) -> dict[str, int]:
    counts = {}
    for table in conn.execute(TABLES_WITH_USER_KEY).scalars():
        count = conn.execute(text(f'SELECT count(*) FROM "{table}" WHERE user_key = :u'), {"u": user_key}).scalar_one()
        if count:
            counts[table] = count
    return counts


def snapshot(conn) -> dict[str, list]:
    """Every row of every table with a user_key, to compare two states (``updated_at`` aside: an upsert
    of the same row stamps it again)."""
    return {table: sorted(str({k: v for k, v in row._mapping.items() if k != "updated_at"})
                          for row in conn.execute(text(f'SELECT * FROM "{table}"')))
            for table in conn.execute(TABLES_WITH_USER_KEY).scalars()}


def test_move_rows_leaves_nothing_of_the_id_and_keeps_the_users_rows_on_conflicts(engine):
    put_everything(engine, "anon-1", "a")
    put_everything(engine, "user-1", "u")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO user_consent (user_key, opted_out, time_zone) VALUES "
                          "('anon-1', true, 'America/New_York'), ('user-1', false, 'Europe/Paris')"))
        record_links(conn, [link("anon-0", "anon-1"), link("anon-1", "user-1"),
                            link("device-9", "anon-1", "refused", reason="the id was joined to another user first")])

    with engine.begin() as conn:
        touched = move_rows(conn, "anon-1", "user-1")

    assert touched == {"events": 3, "sessions": 2, "user_profiles": 1, "user_activity": 1, "behaviour_triggers": 1,
                       "segment_members": 2, "segment_transitions": 2, "campaign_deliveries": 2, "user_consent": 1,
                       "user_identities": 2}
    with engine.connect() as conn:
        assert rows_of(conn, "anon-1") == {}
        def q(sql: str) -> list:
            return conn.execute(text(sql)).all()

        assert q("SELECT user_key, count(*) FROM events WHERE user_key LIKE '%-1' GROUP BY 1") == [("user-1", 6)]
        # The user's session of the same id stays (the merged state rewrites it); the id's own moves.
        assert sorted(q("SELECT session_id, events FROM sessions WHERE user_key = 'user-1'")) == [
            ("s-a", 1), ("s-shared", 2), ("s-u", 1)]
        assert q("SELECT user_key FROM user_profiles WHERE user_key LIKE '%-1'") == [("user-1",)]
        assert q("SELECT user_key FROM user_activity WHERE user_key LIKE '%-1'") == [("user-1",)]
        # Trigger ids keep naming the id: deliveries and campaigns refer to them.
        assert sorted(q("SELECT trigger_id, user_key FROM behaviour_triggers")) == [
            ("cart_abandonment:anon-1:a", "user-1"), ("cart_abandonment:user-1:u", "user-1")]
        assert sorted(q("SELECT segment, entered_at FROM segment_members WHERE user_key = 'user-1'")) == [
            ("both", NOW - timedelta(days=1)), ("only-a", NOW - timedelta(days=1)), ("only-u", NOW - timedelta(days=1))]
        # Entries minus exits still count the members: the double membership ended in a published exit.
        for segment, size, members in q("""
                SELECT s.name, count(*) FILTER (WHERE t.change = 'enter') - count(*) FILTER (WHERE t.change = 'exit'),
                       (SELECT count(*) FROM segment_members m WHERE m.segment = s.name)
                  FROM segments s JOIN segment_transitions t ON t.segment = s.name GROUP BY s.name"""):
            assert size == members, segment
        assert q("SELECT segment FROM segment_transitions WHERE change = 'exit' AND published_at IS NULL") == []
        # (campaign, user_key, episode) is unique: the user's delivery of the shared episode stays.
        assert sorted(q("SELECT episode, idempotency_key FROM campaign_deliveries WHERE user_key = 'user-1'")) == [
            ("episode-a", "a-episode-a"), ("episode-u", "u-episode-u"), ("shared-episode", "u-shared-episode")]
        # The stricter consent wins, the user's time zone stays.
        assert q("SELECT user_key, opted_out, time_zone FROM user_consent WHERE user_key LIKE '%-1'") == [
            ("user-1", True, "Europe/Paris")]
        # The ids of the id are the user's now: the chain anon-0 -> anon-1 -> user-1 is flat.
        assert sorted(q("SELECT id, user_key, status FROM user_identities")) == [
            ("anon-0", "user-1", "merged"), ("anon-1", "user-1", "merged"), ("device-9", "user-1", "refused")]
        before = snapshot(conn)

    with engine.begin() as conn:
        assert move_rows(conn, "anon-1", "user-1") == {}
    with engine.connect() as conn:
        assert snapshot(conn) == before


def test_consent_and_memberships_of_an_id_alone_move_whole(engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO user_consent (user_key, opted_out, time_zone) "
                          "VALUES ('anon-2', true, 'Asia/Tokyo')"))
        conn.execute(text("INSERT INTO segments (name, definition, status) VALUES ('solo', '{}', 'active')"))
        conn.execute(text("INSERT INTO segment_members (segment, user_key, entered_at) VALUES ('solo', 'anon-2', :t)"),
                     {"t": NOW})
        assert move_rows(conn, "anon-2", "user-2") == {"user_consent": 1, "segment_members": 1}
        assert conn.execute(text("SELECT user_key, opted_out, time_zone FROM user_consent WHERE user_key LIKE '%-2'")
                            ).all() == [("user-2", True, "Asia/Tokyo")]
        assert conn.execute(text("SELECT user_key, entered_at FROM segment_members WHERE segment = 'solo'")).all() == [
            ("user-2", NOW)]
        assert conn.execute(text("SELECT count(*) FROM segment_transitions WHERE segment = 'solo'")).scalar_one() == 0
        with pytest.raises(ValueError):
            move_rows(conn, "user-2", "user-2")


def test_a_table_added_later_is_moved_too_without_a_rule(engine):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE loyalty_points (user_key varchar(256) NOT NULL, program text NOT NULL, "
                          "points int NOT NULL, PRIMARY KEY (user_key, program))"))
        conn.execute(text("INSERT INTO loyalty_points VALUES ('anon-3', 'gold', 5), ('anon-3', 'silver', 7), "
                          "('user-3', 'gold', 50)"))
    try:
        with engine.begin() as conn:
            assert move_rows(conn, "anon-3", "user-3") == {"loyalty_points": 2}
            assert sorted(conn.execute(text("SELECT * FROM loyalty_points")).all()) == [
                ("user-3", "gold", 50), ("user-3", "silver", 7)]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE loyalty_points"))


def test_canonical_key_follows_a_chain_within_its_bound_and_ids_of_lists_the_graph(engine):
    put_profiles(engine, [profile("user-4", NOW), profile("loner", NOW)])
    with engine.begin() as conn:
        record_links(conn, [link("a-4", "b-4", at=NOW), link("b-4", "user-4", kind="alias", at=NOW + timedelta(1)),
                            link("x-4", "y-4"), link("y-4", "x-4"),  # a loop: never followed for ever
                            link("z-4", "user-4", "refused", reason="denylisted id")])
    with engine.connect() as conn:
        assert canonical_key(conn, "a-4") == "user-4"
        assert canonical_key(conn, "b-4") == "user-4"
        assert canonical_key(conn, "user-4") == "user-4"
        assert canonical_key(conn, "a-4", max_depth=1) == "b-4"
        assert canonical_key(conn, "x-4") == "y-4"  # the loop ends where it would come back
        assert canonical_key(conn, "loner") == "loner"
        assert canonical_key(conn, "z-4") is None  # refused to user-4, and no profile of its own
        assert canonical_key(conn, "nobody") is None
        ids = ids_of(conn, "user-4")
        assert [(r["id"], r["user_key"], r["kind"], r["status"]) for r in ids] == [
            ("a-4", "b-4", "anonymous", "merged"), ("z-4", "user-4", "anonymous", "refused"),
            ("b-4", "user-4", "alias", "merged")]
        assert ids[0]["linked_at"] == NOW and ids[1]["reason"] == "denylisted id"
        assert [r["id"] for r in ids_of(conn, "user-4", max_depth=1)] == ["z-4", "b-4"]
        # Erasure takes the merged ids, not the refused one (it is not the user's).
        assert erasable_ids(conn, "a-4") == ("user-4", ["user-4", "a-4", "b-4"])


def test_record_links_is_idempotent_and_the_first_merge_of_an_id_wins(engine):
    later = NOW + timedelta(hours=1)
    with engine.begin() as conn:
        assert record_links(conn, [link("a-5", "user-5", "linked")]) == 1
        assert record_links(conn, [link("a-5", "user-5", "merged", at=later)]) == 1
        assert record_links(conn, [link("a-5", "user-5", "merged", at=later + timedelta(1))]) == 0  # redelivered
        assert record_links(conn, [link("a-5", "user-5", "linked", at=later + timedelta(2))]) == 0  # never back
        # Another user's merge of the same id is a refusal, in one batch or later.
        assert record_links(conn, [link("a-5", "other-5")]) == 1
        assert record_links(conn, [link("c-5", "user-5"), link("c-5", "other-5"), link("user-5", "user-5")]) == 2
        rows = conn.execute(text("SELECT id, user_key, status, reason, linked_at FROM user_identities "
                                 "WHERE id IN ('a-5', 'c-5') ORDER BY id, user_key")).all()
    assert rows == [("a-5", "other-5", "refused", "the id was merged into another user first", NOW),
                    ("a-5", "user-5", "merged", None, later),
                    ("c-5", "other-5", "refused", "the id was merged into another user first", NOW),
                    ("c-5", "user-5", "merged", None, NOW)]


def test_write_batch_moves_the_id_with_the_merged_profile_or_not_at_all(engine):
    put_everything(engine, "anon-6", "a6")
    writer = StreamWriter(engine)
    merged = profile("user-6", NOW, page_views=6, events=6)
    bad = {**profile("user-6", NOW), "first_seen_at": None}  # first_seen_at is NOT NULL: the batch fails

    with pytest.raises(psycopg2.errors.NotNullViolation):
        writer.write_batch([bad], [], None, merges=[("anon-6", "user-6")], links=[link("anon-6", "user-6")])
    with engine.connect() as conn:
        assert rows_of(conn, "anon-6")["user_profiles"] == 1 and rows_of(conn, "user-6") == {}
        assert conn.execute(text("SELECT count(*) FROM user_identities WHERE id = 'anon-6'")).scalar_one() == 0

    writer.write_batch([merged], [], None, merges=[("anon-6", "user-6")], links=[link("anon-6", "user-6")])
    with engine.connect() as conn:
        assert rows_of(conn, "anon-6") == {}
        assert conn.execute(text("SELECT events FROM user_profiles WHERE user_key = 'user-6'")).scalar_one() == 6
        assert rows_of(conn, "user-6")["events"] == 3
        assert canonical_key(conn, "anon-6") == "user-6"
        before = snapshot(conn)
    # Redelivered: the same writes change nothing.
    writer.write_batch([merged], [], None, merges=[("anon-6", "user-6")], links=[link("anon-6", "user-6")])
    with engine.connect() as conn:
        assert snapshot(conn) == before
    # The existing callers' form still works.
    writer.write_batch([profile("user-6b", NOW)], [], None)
    writer.write_batch([], [], None, ["user-6b"])


def test_users_show_and_the_api_find_the_user_by_any_id(test_settings, engine):
    put_profiles(engine, [profile("user-7", NOW, orders=2, revenue="30", last_purchase_days=1)])
    with engine.begin() as conn:
        record_links(conn, [link("anon-7", "user-7"), link("old-7", "user-7", kind="alias")])
    # The command reads only the database here (and its other settings from their defaults).
    env = {**os.environ, "SPOOR_DATABASE_URL": test_settings.database_url}
    shown = subprocess.run([sys.executable, "-m", "spoor.cli", "users", "show", "anon-7"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["user_key"] == "user-7" and view["looked_up_by"] == "anon-7"
    assert view["profile"]["orders"] == 2
    assert sorted((i["id"], i["kind"], i["status"]) for i in view["ids"]) == [
        ("anon-7", "anonymous", "merged"), ("old-7", "alias", "merged")]
    assert user_view(engine, "old-7")["user_key"] == "user-7"

    app = create_api(test_settings.model_copy(update={"admin_token": TOKEN}), engine, clock=lambda: NOW)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get("/users/anon-7").json()["user_key"] == "user-7"
        # Consent given by any id is the user's.
        assert client.put("/users/anon-7/consent", json={"opted_out": True}).json()["user_key"] == "user-7"
        assert client.get("/users/user-7").json()["consent"]["opted_out"] is True
        assert client.get("/users/nobody-7").status_code == 404


def test_erasing_by_an_anonymous_id_erases_the_user_and_every_id_of_theirs(test_settings, engine):
    put_everything(engine, "user-8", "u8")
    put_everything(engine, "anon-8", "a8")
    put_everything(engine, "pending-8", "p8")  # linked to the user, not merged yet: its rows are its own
    put_profiles(engine, [profile("someone-else", NOW)])
    with engine.begin() as conn:
        record_links(conn, [link("anon-8", "user-8"), link("pending-8", "user-8", "linked"),
                            link("someone-else", "user-8", "refused", kind="user", reason="a known user of its own"),
                            link("shared-8", "someone-else")])
        move_rows(conn, "anon-8", "user-8")
        conn.execute(text("INSERT INTO dead_letters (id, processor, reason, payload, received_at) VALUES "
                          "('t/0/1', 'worker', 'bad', '{\"anonymousId\": \"anon-8\"}', now())"))
    settings = test_settings.model_copy(update={"erase_worker_wait_s": 120.0})

    report = erase_user(settings, engine, "anon-8", actor="test")

    assert report["worker_state_erased"] is False and report["ids_erased"] == 3
    assert report["rows_removed"]["dead_letters"] == 1 and report["rows_removed"]["user_identities"] == 3
    with engine.connect() as conn:
        for key in ("user-8", "anon-8", "pending-8"):
            assert rows_of(conn, key) == {}, key
        assert conn.execute(text("SELECT count(*) FROM user_identities WHERE id IN ('anon-8', 'pending-8', 'user-8')"
                                 )).scalar_one() == 0
        # What is someone else's stays.
        assert rows_of(conn, "someone-else") == {"user_identities": 1, "user_profiles": 1}
        audit = conn.execute(text("SELECT action, details::text FROM privacy_audit_log ORDER BY id")).all()
    assert [action for action, _ in audit] == ["erase_rows", "erase_state"]
    assert json.loads(audit[0][1])["ids_erased"] == 3 and len(json.loads(audit[0][1])["ids_hmac"]) == 3
    assert not any(key in details for _, details in audit for key in ("user-8", "anon-8", "pending-8"))

    # An erasure record for each id, on its partition, for the worker to apply when it next runs.
    partitions = [TopicPartition(settings.events_topic, p) for p in range(settings.topic_partitions)]
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records = [(record.partition, orjson.loads(record.value)["erase_user_key"]) for record in consumer]
    consumer.close()
    assert sorted(records) == sorted((partition_for(key, settings.topic_partitions), key)
                                     for key in ("user-8", "anon-8", "pending-8"))

    again = erase_user(settings, engine, "anon-8", actor="test")
    assert again["rows_removed"] == {} and again["ids_erased"] == 1
