"""A subject's export (privacy/export.py, docs/privacy.md#export-right-of-access) on the real stack: two
shoppers browse anonymously in a session of the same id, view the same product, log in (the worker merges
their anonymous ids), buy, and each sends one event the collector dead-letters; a campaign reaches both.
Ann's export holds each of those under its table, by any of her ids, and nothing of Bob's; hostile ids get
a clear refusal or nothing; the CLI writes the document, the API serves it to the admin token only."""

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from spoor.cli.admin_api import create_api
from spoor.cli.collector_client import CollectorClient
from spoor.privacy.export import InvalidSubjectId, SharedId, UnknownSubject, export_subject, resolve_subject
from spoor.storage import api_keys
from tests.support.local_stack import REPO, wait_until
from tests.unit.test_subject_export import COLUMN_TYPES, base_type

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"
ANN, BOB = ("ann-7f3", "anon-ann-7f3"), ("bob-9k2", "anon-bob-9k2")


def journey(user: str, anonymous: str, at: datetime) -> list[dict]:
    def ts(minutes: int) -> str:
        return (at + timedelta(minutes=minutes)).isoformat()
    context = {"sessionId": "s-shared"}
    return [
        {"type": "page", "anonymousId": anonymous, "messageId": f"{user}-1", "timestamp": ts(0), "context": context},
        {"type": "track", "event": "Product Viewed", "anonymousId": anonymous, "messageId": f"{user}-2",
         "timestamp": ts(1), "context": context, "properties": {"product_id": "P-SHARED", "category": "shoes",
                                                                "price": 12.5}},
        {"type": "identify", "userId": user, "anonymousId": anonymous, "messageId": f"{user}-3", "timestamp": ts(2),
         "context": context, "traits": {"email": f"{user}@example.com"}},
        {"type": "track", "event": "Order Completed", "userId": user, "anonymousId": anonymous,
         "messageId": f"{user}-4", "timestamp": ts(3), "context": context,
         "properties": {"order_id": f"O-{user}", "revenue": 12.5, "currency": "EUR",
                        "products": [{"product_id": "P-SHARED", "price": 12.5, "quantity": 1}]}},
    ]


def rejected(user: str, at: datetime) -> dict:
    return {"type": "track", "event": "Product Viewed", "userId": user, "messageId": f"{user}-bad",
            "timestamp": at.isoformat(), "properties": {"product_id": "P-SHARED", "price": "twelve"}}


@pytest.fixture(scope="module")
def shoppers(start_process, collector, write_key, engine):
    start_process("worker")
    at = datetime.now(UTC) - timedelta(hours=1)
    client = CollectorClient(collector, write_key)
    try:
        for user, anonymous in (ANN, BOB):
            status, _ = client.send_batch(journey(user, anonymous, at))
            assert status == 200
            client.send_batch([rejected(user, at)])
    finally:
        client.close()

    def settled():
        with engine.connect() as conn:
            merged = conn.execute(text("SELECT count(*) FROM user_identities WHERE status = 'merged' "
                                       "AND user_key IN (:a, :b)"), {"a": ANN[0], "b": BOB[0]}).scalar_one()
            orders = conn.execute(text("SELECT coalesce(sum(orders), 0) FROM user_profiles WHERE user_key IN (:a, :b)"),
                                  {"a": ANN[0], "b": BOB[0]}).scalar_one()
            dead = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
            return merged == 2 and orders == 2 and dead >= 2
    wait_until(settled, 90, "both shoppers merged, with their orders and dead letters")
    with engine.begin() as conn:  # a campaign reached both (the campaign runner's rows, written as it writes them)
        conn.execute(text("INSERT INTO campaigns (name, definition, status) VALUES ('winback', '{}', 'active')"))
        for user, _ in (ANN, BOB):
            delivery = conn.execute(text(
                "INSERT INTO campaign_deliveries (campaign, user_key, episode, idempotency_key, triggered_at, due_at,"
                " expires_at, status, attempts, sent_at, next_attempt_at) VALUES ('winback', :u, 'e1', :k, now(),"
                " now(), now() + interval '1 day', 'sent', 1, now(), now()) RETURNING id"), {"u": user, "k": f"idem-{user}"}
            ).scalar_one()
            conn.execute(text("INSERT INTO campaign_attempts (delivery_id, triggered_at, attempt, at, status_code, "
                              "response) SELECT :d, triggered_at, 1, now(), 200, :r FROM campaign_deliveries "
                              "WHERE id = :d"), {"d": delivery, "r": f"ok {user}"})
        conn.execute(text("INSERT INTO user_consent (user_key, opted_out, time_zone) "
                          "VALUES (:u, true, 'Europe/Paris')"), {"u": ANN[0]})
        # A device both shoppers' events named, claimed by neither yet: erasure would take it, export must not.
        conn.execute(text("INSERT INTO user_identities (id, user_key, kind, status) VALUES "
                          "('kiosk-1', :a, 'anonymous', 'linked'), ('kiosk-1', :b, 'anonymous', 'linked')"),
                     {"a": ANN[0], "b": BOB[0]})
        conn.execute(text("INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source) "
                          "VALUES ('kiosk-e1', 'kiosk-1', 'page', 'Page Viewed', now(), now(), 'web')"))
    return at


def without_time(document: dict) -> dict:
    return {**document, "subject": {k: v for k, v in document["subject"].items()
                                    if k not in ("generated_at", "looked_up_by")}}


def test_the_export_holds_each_kind_of_data_under_its_table_and_nothing_of_the_other_shopper(shoppers, engine):
    document = export_subject(engine, ANN[0])
    subject, tables = document["subject"], document["tables"]
    assert subject["user_key"] == ANN[0] and set(subject["ids"]) == {ANN[0], ANN[1]}
    assert subject["generated_at"].endswith("Z")
    with engine.connect() as conn:
        expected_tables = set(conn.execute(text(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND column_name = 'user_key' AND table_name IN (SELECT table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE') "
            "AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition)")).scalars())  # events' (0027)
    assert expected_tables | {"campaign_attempts", "dead_letters"} == set(tables)

    assert [row["user_key"] for row in tables["user_profiles"]] == [ANN[0]]
    assert tables["user_profiles"][0]["orders"] == 1 and tables["user_profiles"][0]["revenue"] == "12.5000"
    events = tables["events"]
    assert {e["event_id"].rsplit("-", 1)[-1] for e in events} >= {"1", "2", "4"}  # the anonymous ones too
    assert {e["user_key"] for e in events} == {ANN[0]}
    assert any(e["product_id"] == "P-SHARED" for e in events)
    assert [(s["user_key"], s["session_id"]) for s in tables["sessions"]] == [(ANN[0], "s-shared")]
    assert [(i["id"], i["status"]) for i in tables["user_identities"]] == [(ANN[1], "merged")]
    assert len(tables["dead_letters"]) == 1 and tables["dead_letters"][0]["payload"]["userId"] == ANN[0]
    assert [(d["campaign"], d["status"]) for d in tables["campaign_deliveries"]] == [("winback", "sent")]
    assert [a["response"] for a in tables["campaign_attempts"]] == [f"ok {ANN[0]}"]
    assert [(c["opted_out"], c["time_zone"]) for c in tables["user_consent"]] == [(True, "Europe/Paris")]
    assert tables["user_interests"], "her interests in the product she bought"
    assert "user_rfm" in document["derived"]
    assert document["not_included"]

    flat = json.dumps(document)
    for foreign in (*BOB, "kiosk"):
        assert foreign not in flat
    assert export_subject(engine, BOB[0])["tables"]["sessions"][0]["session_id"] == "s-shared"


def test_any_id_of_the_shopper_gives_the_same_document(shoppers, engine):
    by_user, by_anonymous = export_subject(engine, ANN[0]), export_subject(engine, ANN[1])
    assert by_anonymous["subject"]["looked_up_by"] == ANN[1]
    assert without_time(by_user) == without_time(by_anonymous)
    assert json.dumps(by_user) == json.dumps(export_subject(engine, ANN[0], clock=lambda: datetime.fromisoformat(
        by_user["subject"]["generated_at"])))  # stable: rows, order and values


def test_a_linked_id_someone_else_claims_is_left_out(shoppers, engine):
    with engine.connect() as conn:
        assert "kiosk-1" not in resolve_subject(conn, ANN[0]).ids
    assert export_subject(engine, "kiosk-1")["subject"]["ids"] == ["kiosk-1"]  # asked by itself: its own rows


@pytest.mark.parametrize("hostile, error", [
    ("x" * 10_000, InvalidSubjectId), ("a\x00b", InvalidSubjectId), ("", InvalidSubjectId),
    ("\udcff", InvalidSubjectId), ("null", SharedId), ("Undefined", SharedId),
    ("' OR '1'='1", UnknownSubject), (f"{ANN[0]}' OR user_key LIKE '%", UnknownSubject), ("%", UnknownSubject),
    ("💩‮", UnknownSubject), (f"{ANN[0]} ", UnknownSubject), (ANN[0].upper(), UnknownSubject),
])
def test_hostile_ids_get_a_clear_error_never_someone_elses_rows(shoppers, engine, hostile, error):
    with pytest.raises(error):
        export_subject(engine, hostile)


def test_every_column_type_exported_has_a_tested_json_form(shoppers, engine):
    with engine.connect() as conn:
        types = set(conn.execute(text(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.relnamespace = current_schema()::regnamespace AND a.attnum > 0 AND NOT a.attisdropped "
            "AND c.relname = ANY(:tables)"), {"tables": list(export_subject(engine, ANN[0])["tables"])}).scalars())
    assert {base_type(t) for t in types} <= set(COLUMN_TYPES), types


@pytest.fixture(scope="module")
def api(test_settings, engine):
    settings = test_settings.model_copy(update={"admin_token": TOKEN, "campaign_webhook_secret": "s"})
    with TestClient(create_api(settings, engine), raise_server_exceptions=False) as client:
        yield client


def test_the_api_serves_the_document_to_the_admin_token_only(shoppers, engine, api):
    answer = api.get(f"/users/{ANN[1]}/export", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    assert without_time(answer.json()) == without_time(export_subject(engine, ANN[0]))
    reader = api_keys.create_key(engine, "shop-backend", "recommendations")
    wait_until(lambda: api.get("/v1/recommendations/users/x", headers={"Authorization": f"Bearer {reader}"}
                               ).status_code == 200, 10, "the reader key to be known")
    assert api.get(f"/users/{ANN[0]}/export", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    assert api.get(f"/users/{ANN[0]}/export").status_code == 401
    summary = api.get("/openapi.json").json()["paths"]["/users/{user_key}/export"]["get"]["summary"]
    assert "right of access" in summary


@pytest.mark.parametrize("path, status", [("never-seen", 404), ("null", 400), ("%00", 422), ("x" * 300, 422),
                                          ("%27%20OR%20%271%27%3D%271", 404)])
def test_the_api_refuses_hostile_ids_clearly(shoppers, api, path, status):
    answer = api.get(f"/users/{path}/export", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == status, answer.text
    assert ANN[0] not in answer.text and BOB[0] not in answer.text


def test_the_cli_writes_the_document_to_a_private_file(shoppers, test_settings, engine, tmp_path):
    env = {**os.environ, "SPOOR_DATABASE_URL": test_settings.database_url}
    target = tmp_path / "ann.json"
    done = subprocess.run([sys.executable, "-m", "spoor.cli", "users", "export", ANN[1], "--output", str(target)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and f"to {target}" in done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert without_time(json.loads(target.read_text())) == without_time(export_subject(engine, ANN[0]))
    assert [p.name for p in tmp_path.iterdir()] == ["ann.json"]  # no partial file left
    for user_key, code in (("never-seen", 67), ("null", 65)):
        refused = subprocess.run([sys.executable, "-m", "spoor.cli", "users", "export", user_key, "-o",
                                  str(tmp_path / "no.json")], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == code and "spoor users export:" in refused.stderr
    assert not (tmp_path / "no.json").exists()
