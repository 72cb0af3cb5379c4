"""Channel attribution on the real PostgreSQL (segments/attribution.py): the runner's pass, late sessions,
refunds, a merge of an anonymous shopper into the logged-in one, erasure, the report, the CLI, the admin
API with hostile input, and simulated journeys equal to an independent pandas computation.

Rows are written as the worker writes them (profiles, events, sessions); the pass reads them back."""

import random
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from spoor.cli.admin_api import create_api
from spoor.privacy.erasure import erase_user
from spoor.segments.attribution import attribute_people, attribution_pass, report
from spoor.segments.attribution_models import MODELS, channel
from spoor.storage.identities import TABLES_WITH_USER_KEY, move_rows
from tests.support.attribution_reference import KEY, as_set, attribution
from tests.support.local_stack import REPO

pytestmark = pytest.mark.integration
WINDOW = timedelta(days=30)
T0 = datetime(2026, 2, 1, 12, 0, tzinfo=timezone.utc)
TOKEN = "test-admin-token"
SECRETS = {"admin_token": TOKEN, "audit_hmac_key": "k" * 40}


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def touch_profile(conn, user_key: str) -> None:
    """What a batch of the user's events does to their profile: written again (updated_at now)."""
    conn.execute(text(
        "INSERT INTO user_profiles (user_key, first_seen_at, last_seen_at, events, page_views, product_views,"
        " distinct_products_viewed, clicks, cart_adds, cart_removes, cart_value, checkouts, orders, revenue)"
        " VALUES (:u, now(), now(), 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)"
        " ON CONFLICT (user_key) DO UPDATE SET events = user_profiles.events + 1, updated_at = now()"), {"u": user_key})


def add_session(conn, user_key: str, session_id: str, started_at: datetime, utm_source=None, utm_medium=None,
                referrer=None) -> None:
    conn.execute(text(
        "INSERT INTO sessions (user_key, session_id, opened_at, client_session, started_at, ended_at, duration_s,"
        " events, page_views, product_views, cart_adds, checkouts, purchases, revenue, reached_cart, reached_checkout,"
        " reached_purchase, utm_source, utm_medium, referrer)"
        " VALUES (:u, :s, :t, true, :t, :t, 0, 1, 1, 0, 0, 0, 0, 0, false, false, false, :src, :med, :ref)"),
        {"u": user_key, "s": session_id, "t": started_at, "src": utm_source, "med": utm_medium, "ref": referrer})
    touch_profile(conn, user_key)


def add_conversion(conn, user_key: str, event_id: str, kind: str, order_id, at: datetime, amount,
                   currency="EUR") -> None:
    conn.execute(text(
        "INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source, order_id, revenue,"
        " currency) VALUES (:e, :u, :k, :n, :t, now(), 'test', :o, :r, :c)"),
        {"e": event_id, "u": user_key, "k": kind, "n": "Order Completed" if kind == "purchase" else "Order Refunded",
         "t": at, "o": order_id, "r": amount, "c": currency})
    touch_profile(conn, user_key)


def rows_of(engine, user_key: str, model: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT conversion_id, touch, session_id, channel, amount FROM order_attribution"
            " WHERE user_key = :u AND model = :m ORDER BY conversion_id, touch"), {"u": user_key, "m": model})]


def run_pass(engine) -> dict:
    return attribution_pass(engine, WINDOW, overlap_s=10)


def test_an_order_is_split_over_the_sessions_of_its_window_and_the_shares_add_up(engine):
    with engine.begin() as conn:
        add_session(conn, "ann", "a1", day(-45), "google", "cpc")  # out of the window
        add_session(conn, "ann", "a2", day(-20), "google", "cpc")
        add_session(conn, "ann", "a3", day(-3), referrer="https://www.facebook.com/x")
        add_session(conn, "ann", "a4", day(0))
        add_conversion(conn, "ann", "ann-o1", "purchase", "o1", day(0) + timedelta(minutes=9), Decimal("100"))
    assert run_pass(engine)["people"] >= 1
    assert rows_of(engine, "ann", "first_touch") == [("ann-o1", 0, "a2", "google / cpc", Decimal("100.0000"))]
    assert rows_of(engine, "ann", "last_touch") == [("ann-o1", 2, "a4", "direct", Decimal("100.0000"))]
    assert [r[4] for r in rows_of(engine, "ann", "linear")] == [Decimal("33.3400"), Decimal("33.3300"),
                                                                  Decimal("33.3300")]
    assert [r[4] for r in rows_of(engine, "ann", "position_based")] == [Decimal("40"), Decimal("20"), Decimal("40")]
    with engine.connect() as conn:
        wrong = conn.execute(text(
            "SELECT a.conversion_id, a.model FROM order_attribution a JOIN events e ON e.event_id = a.conversion_id"
            " GROUP BY a.conversion_id, a.model, e.revenue, e.kind"
            " HAVING sum(a.amount) <> CASE WHEN e.kind = 'refund' THEN -e.revenue ELSE e.revenue END")).all()
    assert wrong == []


def test_a_late_session_re_attributes_an_order_already_attributed(engine):
    with engine.begin() as conn:
        add_session(conn, "ben", "b2", day(-1), "newsletter", "email")
        add_conversion(conn, "ben", "ben-o1", "purchase", "o1", day(0), Decimal("10.00"))
    run_pass(engine)
    assert rows_of(engine, "ben", "first_touch") == [("ben-o1", 0, "b2", "newsletter / email", Decimal("10"))]
    with engine.begin() as conn:  # an earlier session arrives late
        add_session(conn, "ben", "b1", day(-2), "google", "cpc")
    run_pass(engine)
    assert rows_of(engine, "ben", "first_touch") == [("ben-o1", 0, "b1", "google / cpc", Decimal("10"))]
    assert [(r[3], r[4]) for r in rows_of(engine, "ben", "linear")] == [("google / cpc", Decimal("5")),
                                                                       ("newsletter / email", Decimal("5"))]


def test_refunds_take_back_in_the_orders_shares_and_the_report_nets_them(engine):
    with engine.begin() as conn:
        add_session(conn, "cat", "c1", day(-3), "google", "cpc")
        add_session(conn, "cat", "c2", day(-2), "bing")
        add_session(conn, "cat", "c3", day(-1), "newsletter")
        add_conversion(conn, "cat", "cat-o1", "purchase", "o1", day(0), Decimal("10.00"), currency="USD")
        add_conversion(conn, "cat", "cat-o2", "purchase", "o2", day(0.5), Decimal("0.07"), currency="USD")
        add_session(conn, "cat", "c4", day(1), "tiktok")  # after both orders: no share of them
        add_conversion(conn, "cat", "cat-r1", "refund", "o1", day(2), Decimal("1.00"), currency="USD")
        add_conversion(conn, "cat", "cat-r2", "refund", "o2", day(2), Decimal("0.07"), currency="USD")
    run_pass(engine)
    linear = rows_of(engine, "cat", "linear")
    assert [(r[0], r[3], r[4]) for r in linear if r[0] == "cat-r1"] == [
        ("cat-r1", "google / cpc", Decimal("-0.34")), ("cat-r1", "bing", Decimal("-0.33")),
        ("cat-r1", "newsletter", Decimal("-0.33"))]
    result = report(engine, date(2026, 2, 1), date(2026, 2, 3), ["linear"], per_day=True)
    by_channel: dict[str, Decimal] = {}
    for row in result["rows"]:
        if row["currency"] == "USD":
            by_channel[row["channel"]] = by_channel.get(row["channel"], 0) + Decimal(row["net_revenue"])
    assert by_channel == {"google / cpc": Decimal("3.00"), "bing": Decimal("3.00"), "newsletter": Decimal("3.00")}
    assert sum(by_channel.values()) == Decimal("10.00") + Decimal("0.07") - Decimal("1.00") - Decimal("0.07")
    refund_days = {row["day"] for row in result["rows"] if row["currency"] == "USD" and Decimal(row["refunded"]) != 0}
    assert refund_days == {"2026-02-03"}  # a refund counts on the day it was made


def test_an_anonymous_shoppers_sessions_count_once_merged_into_the_logged_in_user(engine):
    with engine.begin() as conn:
        add_session(conn, "anon-dan", "d1", day(-10), "facebook", "paid_social")
        add_session(conn, "dan", "d2", day(0))
        add_conversion(conn, "dan", "dan-o1", "purchase", "o1", day(0), Decimal("50"))
    run_pass(engine)
    assert rows_of(engine, "dan", "first_touch")[0][3] == "direct"
    with engine.begin() as conn:  # the worker's merge: anon-dan's rows move to dan, dan's profile is rewritten
        move_rows(conn, "anon-dan", "dan")
        touch_profile(conn, "dan")
    run_pass(engine)
    assert [(r[2], r[3]) for r in rows_of(engine, "dan", "first_touch")] == [("d1", "facebook / paid_social")]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM order_attribution WHERE user_key = 'anon-dan'")).scalar() == 0


def test_a_merge_in_progress_is_skipped_and_the_merged_ids_rows_never_outlive_it(engine):
    with engine.begin() as conn:
        add_conversion(conn, "anon-eve", "eve-o1", "purchase", "o1", day(0), Decimal("5"))
        add_conversion(conn, "eve", "eve-o2", "purchase", "o2", day(1), Decimal("7"))
    with engine.connect() as merge:
        tx = merge.begin()
        move_rows(merge, "anon-eve", "eve")  # holds anon-eve's profile FOR UPDATE, then deletes it
        touch_profile(merge, "eve")
        started = time.monotonic()
        attribute_people(engine, ["anon-eve", "eve"], WINDOW)  # skips anon-eve: no wait, no row
        assert time.monotonic() - started < 5
        assert rows_of(engine, "anon-eve", "linear") == []
        assert {r[0] for r in rows_of(engine, "eve", "linear")} == {"eve-o2"}  # as committed so far
        tx.commit()
    run_pass(engine)  # eve's profile was written by the merge: attributed again
    with engine.connect() as conn:
        owners = conn.execute(text("SELECT DISTINCT user_key FROM order_attribution WHERE conversion_id LIKE 'eve-%'"
                                   )).scalars().all()
    assert owners == ["eve"]
    assert {r[0] for r in rows_of(engine, "eve", "linear")} == {"eve-o1", "eve-o2"}


def test_a_chunk_in_progress_holds_a_merge_back_until_it_commits(engine):
    """The other order: the runner's chunk holds the profile first; the merge's rule waits, then deletes."""
    with engine.begin() as conn:
        add_conversion(conn, "anon-hal", "hal-o1", "purchase", "o1", day(0), Decimal("3"))
        touch_profile(conn, "hal")
    done = []
    with engine.connect() as runner:
        tx = runner.begin()
        runner.execute(text("SELECT 1 FROM user_profiles WHERE user_key = 'anon-hal' FOR KEY SHARE"))
        attribute_people(engine, ["anon-hal"], WINDOW)  # another chunk of the runner: shares the lock
        assert rows_of(engine, "anon-hal", "linear")

        def merge():
            with engine.begin() as conn:
                done.append(move_rows(conn, "anon-hal", "hal"))
                touch_profile(conn, "hal")
        merging = threading.Thread(target=merge)
        merging.start()
        time.sleep(1.0)
        assert not done  # waiting for the chunk
        tx.commit()
    merging.join(30)
    assert done and done[0].get("order_attribution") == 4  # the chunk's rows, removed by the merge
    assert rows_of(engine, "anon-hal", "linear") == []
    run_pass(engine)
    assert [r[0] for r in rows_of(engine, "hal", "linear")] == ["hal-o1"]


def test_erasure_removes_the_rows_and_the_catalogue_lists_the_table(test_settings, engine):
    with engine.begin() as conn:
        add_session(conn, "fay", "f1", day(-1), "google", "cpc")
        add_conversion(conn, "fay", "fay-o1", "purchase", "o1", day(0), Decimal("5"))
    run_pass(engine)
    assert rows_of(engine, "fay", "linear")
    with engine.connect() as conn:
        assert "order_attribution" in conn.execute(TABLES_WITH_USER_KEY).scalars().all()
    erase_user(test_settings.model_copy(update={"erase_worker_wait_s": 1.0, **SECRETS}), engine, "fay", actor="test")
    assert rows_of(engine, "fay", "linear") == []


def simulated_journeys(seed: int = 2326) -> tuple[list[dict], list[dict]]:
    """People with 0-12 sessions over 6 channels and 1-5 orders, some sent twice, some refunded (in part,
    in full, or naming an order never seen)."""
    rng = random.Random(seed)
    channels = [("google", "cpc", None), ("newsletter", "email", None), ("facebook", None, None),
                (None, None, "https://www.bing.com/search"), (None, None, "https://t.co/x"), (None, None, None)]
    sessions, conversions = [], []
    for p in range(120):
        user = f"sim-{p}"
        for s in range(rng.randint(0, 12)):
            source, medium, referrer = rng.choice(channels)
            sessions.append({"user_key": user, "session_id": f"{user}-s{s}", "started_at": day(rng.uniform(-80, 40)),
                             "utm_source": source, "utm_medium": medium, "referrer": referrer})
        for o in range(rng.randint(1, 5)):
            amount = Decimal(rng.randint(1, 100_000)) / rng.choice([1, 100, 100, 10_000])
            at = day(rng.uniform(-40, 40))
            order_id = None if rng.random() < 0.1 else f"o{o}"
            conversions.append({"user_key": user, "conversion_id": f"{user}-e{o}", "kind": "order",
                                "order_id": order_id, "at": at, "amount": amount})
            if order_id and rng.random() < 0.2:  # the same order sent twice
                conversions.append({**conversions[-1], "conversion_id": f"{user}-e{o}-again",
                                    "at": at + timedelta(seconds=rng.randint(0, 5))})
            if rng.random() < 0.3:  # a refund of part or all of it, or of an order we never saw
                refunded = amount if rng.random() < 0.5 else (amount / 3).quantize(Decimal("0.01"))
                conversions.append({"user_key": user, "conversion_id": f"{user}-r{o}", "kind": "refund",
                                    "order_id": order_id if rng.random() < 0.8 else f"unknown-{o}",
                                    "at": at + timedelta(days=rng.uniform(0, 10)), "amount": refunded})
    return sessions, conversions


def test_simulated_journeys_equal_the_pandas_computation(engine):
    sessions, conversions = simulated_journeys()
    half = len(sessions) // 2
    with engine.begin() as conn:
        for s in sessions[:half]:
            add_session(conn, **s)
        for c in conversions:
            add_conversion(conn, c["user_key"], c["conversion_id"], "purchase" if c["kind"] == "order" else "refund",
                           c["order_id"], c["at"], c["amount"])
    run_pass(engine)
    with engine.begin() as conn:  # the other half of the sessions arrives late
        for s in sessions[half:]:
            add_session(conn, **s)
    run_pass(engine)

    expected = as_set(attribution(pd.DataFrame(sessions), pd.DataFrame(conversions), pd.Timedelta(WINDOW)))
    with engine.connect() as conn:
        stored = as_set(pd.DataFrame(conn.execute(text(
            "SELECT user_key, conversion_id, model, touch, session_id, channel, amount FROM order_attribution"
            " WHERE user_key LIKE 'sim-%'")).all(), columns=KEY))
    assert len(expected) > 1000
    assert stored == expected


def test_the_channel_rule_equals_the_sessions_traffic_source_without_a_medium(engine):
    """The SQL rule of sessions.traffic_source and the pure one agree on the hosts they both parse."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT utm_source, utm_medium, referrer, traffic_source FROM sessions")).all()
    assert rows
    for source, medium, referrer, traffic_source in rows:
        assert channel(source, None, referrer) == traffic_source


# -- the report's surfaces -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(test_settings, engine):
    settings = test_settings.model_copy(update=SECRETS)
    with TestClient(create_api(settings, engine, clock=lambda: T0 + timedelta(days=2)),
                    raise_server_exceptions=False, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_the_api_reports_revenue_by_channel_and_model(client, engine):
    with engine.begin() as conn:
        add_session(conn, "gus", "g1", day(-1), "google", "cpc")
        add_conversion(conn, "gus", "gus-o1", "purchase", "o1", day(0), Decimal("12.34"), currency="GBP")
    run_pass(engine)
    answer = client.get("/v1/attribution", params={"model": "first_touch", "from": "2026-02-01", "to": "2026-02-01"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["models"] == ["first_touch"] and not body["truncated"]
    assert {"model": "first_touch", "channel": "google / cpc", "currency": "GBP", "orders": 1, "revenue": "12.3400",
            "refunded": "0.0000", "net_revenue": "12.3400"} in body["rows"]
    everything = client.get("/v1/attribution").json()  # the last 30 days to the clock's day, every model
    assert everything["from"] == "2026-01-05" and everything["to"] == "2026-02-03"
    assert {r["model"] for r in everything["rows"]} == set(MODELS)
    per_day = client.get("/v1/attribution", params={"per_day": "true", "model": "linear", "limit": 2}).json()
    assert len(per_day["rows"]) == 2 and per_day["truncated"] and all("day" in r for r in per_day["rows"])


@pytest.mark.parametrize("params", [
    {"model": "time_decay"}, {"model": ""}, {"model": "x" * 10_000}, {"from": "2026-13-01"}, {"from": "yesterday"},
    {"from": "2026-02-30"}, {"to": "0000-01-01"}, {"to": "9999-12-31"}, {"from": "1970-01-01", "to": "2099-12-31"},
    {"from": "2026-02-03", "to": "2026-02-01"}, {"from": "2024-01-01", "to": "2026-01-01"}, {"limit": "0"},
    {"limit": "100001"}, {"limit": "1e9"}, {"per_day": "maybe"}, {"from": "2026-02-01\x00"}, {"from": "２０２６-02-01"},
    {"from": "2026-02-01T00:00:00"}, {"from": "-2026-02-01"}])
def test_hostile_queries_get_a_4xx_with_a_reason(client, params):
    answer = client.get("/v1/attribution", params=params)
    assert 400 <= answer.status_code < 500, (params, answer.status_code, answer.text)
    assert answer.json()["detail"]


def test_the_api_needs_the_admin_token(client):
    assert client.get("/v1/attribution", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/attribution", headers={"Authorization": ""}).status_code == 401


def test_the_cli_prints_the_report_and_refuses_bad_input(test_settings, engine):
    env = {"SPOOR_DATABASE_URL": test_settings.database_url, "PATH": "/usr/bin:/bin"}

    def spoor(*args):
        return subprocess.run([sys.executable, "-m", "spoor.cli", "attribution", *args], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=120)

    shown = spoor("report", "--model", "linear", "--since", "2026-02-01", "--until", "2026-02-01", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"channel": "google / cpc"' in shown.stdout
    table = spoor("report", "--since", "2026-02-01", "--until", "2026-02-01")
    assert table.returncode == 0 and "position_based" in table.stdout and "google / cpc" in table.stdout
    refreshed = spoor("refresh")
    assert refreshed.returncode == 0 and "attributed" in refreshed.stdout
    for bad in (["report", "--model", "nope"], ["report", "--since", "2026-99-01"],
                ["report", "--since", "2020-01-01", "--until", "2026-01-01"], ["report", "--limit", "0"]):
        refused = spoor(*bad)
        assert refused.returncode != 0 and refused.stderr, bad
