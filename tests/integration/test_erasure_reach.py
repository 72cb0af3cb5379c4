"""Erasure's reach beyond the user_key tables (issue 24, item 2), on the real Kafka and PostgreSQL: the
audit's secret, dead letters that name a person anywhere, the recipients a campaign sent to, the audit
rows of before migration 0026, and the topic configs that make retention the erasure deadline."""

import hashlib
import subprocess
import sys
import uuid

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from sqlalchemy import create_engine, text

from spoor.cli.admin_api import create_api
from spoor.privacy.erasure import AuditKeyMissing, audit_hash, erase_user, erased_entries
from spoor.storage.migrate import upgrade
from spoor.topics import changelog_erasure_configs, create_segment_topics, create_topics, personal_retention
from tests.support.local_stack import REPO, SpoorProcess, run_id
from tests.support.scratch_db import ScratchDatabase

pytestmark = pytest.mark.integration


def insert_profile(conn, user_key: str) -> None:
    conn.execute(text(
        "INSERT INTO user_profiles (user_key, first_seen_at, last_seen_at, events, page_views, product_views,"
        " distinct_products_viewed, clicks, cart_adds, cart_removes, cart_value, checkouts, orders, revenue)"
        " VALUES (:u, now(), now(), 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)"), {"u": user_key})


def insert_dead_letter(conn, dead_id: str, payload: dict, request: dict | None = None) -> None:
    conn.execute(text("INSERT INTO dead_letters (id, processor, reason, payload, request, received_at)"
                      " VALUES (:id, 'collector', 'bad', CAST(:p AS jsonb), CAST(:r AS jsonb), now())"),
                 {"id": dead_id, "p": orjson.dumps(payload).decode(),
                  "r": None if request is None else orjson.dumps(request).decode()})


def records_on(settings, topic: str, partitions: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records = list(consumer)
    consumer.close()
    return records


def test_without_the_audit_secret_nothing_is_erased_and_the_admin_api_does_not_start(test_settings, engine):
    user_key = f"keyless-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        insert_profile(conn, user_key)
    keyless = test_settings.model_copy(update={"audit_hmac_key": ""})
    with pytest.raises(AuditKeyMissing, match="SPOOR_AUDIT_HMAC_KEY is not set"):
        erase_user(keyless, engine, user_key, actor="test")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM user_profiles WHERE user_key = :u"),
                            {"u": user_key}).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM privacy_audit_log")).scalar_one() == 0
    erasure_records = [r for r in records_on(test_settings, test_settings.events_topic, test_settings.topic_partitions)
                       if user_key.encode() in r.value]
    assert erasure_records == []  # refused before the worker was told anything
    with pytest.raises(AuditKeyMissing):
        create_api(keyless.model_copy(update={"admin_token": "t" * 32}), engine)


def test_dead_letters_naming_an_id_anywhere_go_and_the_audit_keeps_only_keyed_hashes(test_settings, engine):
    run = run_id(8)
    user, anon, other = f"dl-user-{run}", f"dl-anon-{run}", f"dl-other-{run}"
    with engine.begin() as conn:
        insert_profile(conn, user)
        conn.execute(text("INSERT INTO user_identities (id, user_key, kind, status, linked_at)"
                          " VALUES (:a, :u, 'anonymous', 'merged', now())"), {"a": anon, "u": user})
        insert_dead_letter(conn, f"{run}/1", {"batch": [{"type": "track", "userId": other},
                                                       {"type": "identify", "anonymousId": anon,
                                                        "traits": {"email": "zed@example.com"}}]})
        insert_dead_letter(conn, f"{run}/2", {"user_key": user, "kind": "product_view"})  # a worker's dead letter
        insert_dead_letter(conn, f"{run}/3", {"raw": f'{{"userId": "{user}", "event": '})  # not JSON: kept as text
        insert_dead_letter(conn, f"{run}/4", {"type": "alias", "previousId": anon, "userId": "someone"})
        insert_dead_letter(conn, f"{run}/5", {"type": "track", "userId": other}, request={"anonymousId": anon})
        # Someone else's, where the id is only a product id or part of a longer id: stays.
        insert_dead_letter(conn, f"{run}/6", {"type": "track", "userId": other,
                                              "properties": {"product_id": user, "note": anon}})
        insert_dead_letter(conn, f"{run}/7", {"raw": f'{{"userId": "{user}-not-the-same"'})

    report = erase_user(test_settings, engine, anon, actor="dpo")

    assert report["ids_erased"] == 2 and report["rows_removed"]["dead_letters"] == 5
    with engine.connect() as conn:
        left = conn.execute(text("SELECT id FROM dead_letters WHERE id LIKE :p ORDER BY id"), {"p": f"{run}/%"})
        assert left.scalars().all() == [f"{run}/6", f"{run}/7"]
        audit = conn.execute(text("SELECT action, user_key_hmac, details::text FROM privacy_audit_log"
                                  " WHERE actor = 'dpo' ORDER BY id")).all()
    secret = test_settings.audit_hmac_key.encode()
    assert [(a.action, a.user_key_hmac) for a in audit] == [("erase_rows", audit_hash(secret, anon)),
                                                            ("erase_state", audit_hash(secret, anon))]
    assert orjson.loads(audit[0].details)["ids_hmac"] == sorted([audit_hash(secret, user), audit_hash(secret, anon)])
    for _, _, details in audit:
        for key in (user, anon):
            assert key not in details and hashlib.sha256(key.encode()).hexdigest() not in details
    # The operator answering "was this person erased?" finds it by any of the ids, with the secret only.
    assert [e["action"] for e in erased_entries(test_settings, engine, user)] == ["erase_rows"]
    assert [e["action"] for e in erased_entries(test_settings, engine, anon)] == ["erase_rows", "erase_state"]
    assert report["kafka_erased_by"] == orjson.loads(audit[1].details)["kafka_erased_by"]
    # The same answer from the command line; an id never erased has none.
    for key, actions in ((user, ["erase_rows"]), (anon, ["erase_rows", "erase_state"]), ("never-erased", [])):
        done = subprocess.run([sys.executable, "-m", "spoor.cli", "users", "erased", key], cwd=REPO, text=True,
                              capture_output=True, env=SpoorProcess("cli", test_settings, REPO).env(), timeout=60)
        assert done.returncode == 0, done.stderr
        assert [entry["action"] for entry in orjson.loads(done.stdout)] == actions


def test_the_campaigns_that_sent_to_the_person_are_reported_as_recipients(test_settings, engine):
    run = run_id(8)
    user = f"rcpt-{run}"
    with engine.begin() as conn:
        insert_profile(conn, user)
        for name, action, status in ((f"hook-{run}", {"webhook": "https://crm.example/hook"}, "sent"),
                                     (f"topic-{run}", {"kafka_topic": "crm.email"}, "sent"),
                                     (f"held-{run}", {"webhook": "https://other.example/hook"}, "holdout")):
            conn.execute(text("INSERT INTO campaigns (name, definition, status) VALUES (:n, CAST(:d AS jsonb), 'active')"),
                         {"n": name, "d": orjson.dumps({"name": name, "action": action}).decode()})
            conn.execute(text(
                "INSERT INTO campaign_deliveries (campaign, user_key, episode, idempotency_key, triggered_at, due_at,"
                " status, attempts, next_attempt_at) VALUES (:c, :u, 'e1', :k, now(), now(), :s, 1, now())"),
                {"c": name, "u": user, "k": uuid.uuid4().hex, "s": status})

    report = erase_user(test_settings, engine, user, actor="test")

    assert report["recipients"] == [{"campaign": f"hook-{run}", "action": "https://crm.example/hook"},
                                    {"campaign": f"topic-{run}", "action": "kafka:crm.email"}]
    assert report["rows_removed"]["campaign_deliveries"] == 3


def test_audit_rows_of_before_0026_lose_their_unkeyed_hashes_and_stay_as_a_record(base_settings):
    database = ScratchDatabase(base_settings.database_url, f"spoor_test_audit_{uuid.uuid4().hex[:10]}")
    engine = create_engine(database.url)
    try:
        upgrade(database.url, "0006")
        sha = hashlib.sha256(b"alice@example.com").hexdigest()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO privacy_audit_log (action, user_key_sha256, actor, details) VALUES"
                              " ('erase_rows', :h, 'cli', CAST(:d AS jsonb))"),
                         {"h": sha, "d": orjson.dumps({"ids_erased": 1, "ids_sha256": [sha],
                                                       "rows_removed": {"events": 3}}).decode()})
        upgrade(database.url)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT action, actor, user_key_hmac, details FROM privacy_audit_log")).one()
        assert row.action == "erase_rows" and row.actor == "cli" and row.user_key_hmac is None
        assert row.details == {"ids_erased": 1, "rows_removed": {"events": 3}, "unkeyed_hashes_removed": "0026"}
    finally:
        engine.dispose()
        database.drop()


def topic_configs(admin: KafkaAdminClient, name: str) -> dict:
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all")
    return {key: entry["value"] for key, entry in described["topic"][name].items()}


def test_topic_creation_gives_existing_topics_and_changelogs_the_erasure_deadline(test_settings):
    run = run_id(8)
    settings = test_settings.model_copy(update={
        "events_topic": f"spoor.test-{run}.events", "dead_letter_topic": f"spoor.test-{run}.dlq",
        "triggers_topic": f"spoor.test-{run}.triggers", "alerts_topic": f"spoor.test-{run}.alerts",
        "segments_topic": f"spoor.test-{run}.segments", "campaigns_dead_letter_topic": f"spoor.test-{run}.cdlq",
        "worker_app_id": f"spoor-test-{run}", "personal_topic_retention_hours": 6.0})
    old = {"retention.ms": str(28 * 86400_000)}  # as a release before this one made them
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="test")
    changelog = f"{settings.worker_app_id}-user-profiles-changelog"
    try:
        admin.create_topics([NewTopic(settings.dead_letter_topic, 1, 1, topic_configs=old),
                             NewTopic(settings.segments_topic, settings.topic_partitions, 1, topic_configs=old),
                             NewTopic(changelog, settings.topic_partitions, 1,
                                      topic_configs={"cleanup.policy": "compact"})])
        create_topics(settings)
        create_segment_topics(settings)
        personal = personal_retention(settings)
        assert personal == {"cleanup.policy": "delete", "retention.ms": str(6 * 3_600_000), "segment.ms": "3600000"}
        for name in (settings.events_topic, settings.dead_letter_topic, settings.triggers_topic,
                     settings.segments_topic, settings.campaigns_dead_letter_topic):
            configs = topic_configs(admin, name)
            assert {key: configs[key] for key in personal} == personal, name
        configs = topic_configs(admin, changelog)
        assert configs["cleanup.policy"] == "compact"  # the other configs stay
        assert {key: configs[key] for key in changelog_erasure_configs(settings)} == changelog_erasure_configs(settings)
        # Idempotent: a second run changes nothing and says so.
        assert create_topics(settings) == []
    finally:
        admin.delete_topics([t for t in admin.list_topics() if run in t])
        admin.close()
