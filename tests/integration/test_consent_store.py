"""Consent per purpose on the real PostgreSQL: the rule "a withdrawal anywhere wins" as campaigns and
recommendations query it, the worker's reads and page-statement writes (storage/consent_store.py), consent
rows merged with the person's ids (storage/identities.py), and the API and CLI that record consent,
hostile input included (docs/privacy.md#consent)."""

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from spoor.campaigns.campaign_dispatch import _without_marketing_consent
from spoor.cli.admin_api import create_api
from spoor.consent import ANALYTICS, MARKETING, PERSONALISATION, PURPOSES
from spoor.privacy.consent import ConsentError, set_consent, withdrawn
from spoor.storage import consent_store
from spoor.storage.identities import move_rows
from spoor.storage.recommendations import NO_PERSONAL_LIST
from tests.support.local_stack import REPO, SpoorProcess

pytestmark = pytest.mark.integration
TOKEN = "consent-token"
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def withdrawn_in_sql(engine, user_key: str) -> set[str]:
    with engine.connect() as conn:
        return {p for p in PURPOSES if conn.execute(text(
            f"SELECT {consent_store.withdrawn_sql(p)} FROM user_consent WHERE user_key = :u"), {"u": user_key}
        ).scalar()}


def row(engine, user_key: str) -> dict | None:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM user_consent WHERE user_key = :u"), {"u": user_key}).first()
    return dict(found._mapping) if found else None


def test_a_withdrawal_recorded_or_stated_by_the_page_is_what_every_reader_sees(engine):
    set_consent(engine, "r1", purposes={MARKETING: False, ANALYTICS: True})
    consent_store.record_page_statements(engine, [("r1", "analytics,marketing", T0)])  # the page says yes
    assert withdrawn_in_sql(engine, "r1") == {MARKETING, PERSONALISATION}  # recorded no wins; page withheld p.
    assert withdrawn(row(engine, "r1")) == [MARKETING, PERSONALISATION]
    set_consent(engine, "r1", opted_out=True)
    assert withdrawn_in_sql(engine, "r1") == set(PURPOSES)
    set_consent(engine, "r1", opted_out=False, purposes={MARKETING: True})
    consent_store.record_page_statements(engine, [("r1", "analytics,marketing,personalisation", T0)])
    assert withdrawn_in_sql(engine, "r1") == set()
    with engine.connect() as conn:  # recommendations' one rule for "no personal list"
        assert conn.execute(NO_PERSONAL_LIST, {"user_key": "r1"}).scalar() is False
        consent_store.record_page_statements(engine, [("r1", "analytics,marketing", T0 + timedelta(1))])
        assert conn.execute(NO_PERSONAL_LIST, {"user_key": "r1"}).scalar() is True


def test_the_workers_reads_see_changes_and_rows_that_withdraw(engine):
    _, before = consent_store.read_withdrawn(engine, 10)
    set_consent(engine, "w1", purposes={ANALYTICS: False})
    consent_store.record_page_statements(engine, [("w2", "analytics", T0), ("w3", "analytics,marketing,personalisation",
                                                                             T0)])
    changed, _ = consent_store.read_changed(engine, before - timedelta(seconds=1))
    by_key = {r.user_key: r for r in changed}
    assert by_key["w1"].recorded == {ANALYTICS} and by_key["w1"].page is None
    assert by_key["w2"].recorded == frozenset() and by_key["w2"].page == {MARKETING, PERSONALISATION}
    assert not by_key["w3"].withdraws_something
    held, _ = consent_store.read_withdrawn(engine, 1000)
    assert {"w1", "w2"} <= {r.user_key for r in held} and "w3" not in {r.user_key for r in held}
    assert len(consent_store.read_withdrawn(engine, 1)[0]) == 1
    assert {r.user_key for r in consent_store.read_users(engine, ["w2", "w3", "nobody"])} == {"w2", "w3"}


def test_consent_follows_the_person_when_ids_merge(engine):
    set_consent(engine, "anon-m", purposes={MARKETING: False})
    consent_store.record_page_statements(engine, [("anon-m", "analytics,marketing,personalisation", T0)])
    set_consent(engine, "member-m", purposes={MARKETING: True, ANALYTICS: True}, time_zone="Europe/Paris")
    consent_store.record_page_statements(engine, [("member-m", "analytics,marketing", T0 + timedelta(hours=1))])
    with engine.begin() as conn:
        move_rows(conn, "anon-m", "member-m")
    assert row(engine, "anon-m") is None
    merged = row(engine, "member-m")
    assert (merged["marketing"], merged["analytics"], merged["time_zone"]) == (False, True, "Europe/Paris")
    assert merged["page_personalisation"] is False  # the later page statement is the member's
    assert merged["page_stated_at"] == T0 + timedelta(hours=1)
    assert withdrawn_in_sql(engine, "member-m") == {MARKETING, PERSONALISATION}


def test_a_campaign_judges_an_id_merged_since_as_the_person_it_belongs_to(engine):
    """A segment entry or trigger can name an id whose rows (consent included) were merged into someone after
    the runner read it: the person's withdrawal holds for a delivery under the old id."""
    set_consent(engine, "member-c", purposes={MARKETING: False}, time_zone="Asia/Tokyo")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO user_identities (id, user_key, kind, status) "
                          "VALUES ('anon-c', 'member-c', 'anonymous', 'merged')"))
        assert _without_marketing_consent(conn, {"anon-c", "member-c", "stranger-c"}) == {"anon-c", "member-c"}
    set_consent(engine, "member-c", purposes={MARKETING: True})
    set_consent(engine, "anon-c", opted_out=True)  # a row left under the old id still counts
    with engine.connect() as conn:
        assert _without_marketing_consent(conn, {"anon-c", "member-c"}) == {"anon-c"}


def test_set_consent_refuses_what_it_cannot_record(engine):
    with pytest.raises(ConsentError):
        set_consent(engine, "x", purposes={"advertising": False})
    with pytest.raises(ConsentError):
        set_consent(engine, "x", purposes={ANALYTICS: "no"})
    assert row(engine, "x") is None


@pytest.fixture(scope="module")
def api(test_settings, engine):
    settings = test_settings.model_copy(update={"admin_token": TOKEN})
    with TestClient(create_api(settings, engine), raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_the_api_records_purposes_and_refuses_anything_but_booleans(api, engine):
    answer = api.put("/users/api-1/consent", json={"analytics": False, "personalisation": True})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["analytics"], answer.json()["personalisation"], answer.json()["marketing"]) == (
        False, True, None)
    for body in ({"analytics": "false"}, {"marketing": 0}, {"personalisation": None, "analytics": [True]},
                 {"analytics": {"x": 1}}):
        refused = api.put("/users/api-1/consent", json=body)
        assert refused.status_code == 422, (body, refused.text)
    assert row(engine, "api-1")["analytics"] is False
    assert api.get("/users/api-1").json()["consent"]["analytics"] is False


def test_the_cli_grants_and_withdraws(test_settings):
    def spoor(*args):
        return subprocess.run([sys.executable, "-m", "spoor.cli", "users", "consent", *args], cwd=REPO, text=True,
                              capture_output=True, env=SpoorProcess("cli", test_settings, REPO).env(), timeout=60)

    done = spoor("cli-1", "--withdraw", "marketing", "--withdraw", "analytics", "--grant", "personalisation")
    assert done.returncode == 0, done.stderr
    assert '"marketing": false' in done.stdout and '"personalisation": true' in done.stdout
    both = spoor("cli-1", "--grant", "marketing", "--withdraw", "marketing")
    assert both.returncode != 0 and "both granted and withdrawn" in both.stderr
    unknown = spoor("cli-1", "--withdraw", "advertising")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
