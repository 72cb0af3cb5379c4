"""Real shoppers' data through `spoor replay`, the collector, Kafka, Faust and PostgreSQL.

The expected numbers are computed here from the raw files with pandas, with
none of Spoor's code: per-customer orders, revenue net of cancellations, first
and last purchase, recency, RFM scores and groups for the UCI Online Retail file
(all 245,903 rows); per-user counts for the REES46 sample. They must match
``user_profiles`` and ``user_rfm`` exactly.

The Online Retail checks run before the REES46 file is replayed (file order):
RFM scores are relative to the latest purchase in the database, and the REES46
purchases are from 2019.
"""

import bisect
import re
import subprocess
import sys
import urllib.request
from datetime import timedelta
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import text

from tests.support.local_stack import REPO, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DATA = REPO.parent / "shared" / "data"
ONLINE_RETAIL = DATA / "online_retail_2010-12_2011-06.csv.gz"
REES46 = DATA / "rees46_2019-10_sample_1000.csv"
DRAIN_TIMEOUT_S = 300


# ---- the independent computation ------------------------------------------------------------------

def expected_online_retail() -> dict:
    df = pd.read_csv(ONLINE_RETAIL, dtype=str, keep_default_na=False)
    assert len(df) == 245_903
    # Every line's Quantity x UnitPrice, cancellations negative: the shop's net takings in the file.
    total_revenue = sum(Decimal(q) * Decimal(p) for q, p in zip(df["Quantity"], df["UnitPrice"]))
    df["cancelled"] = df["InvoiceNo"].str.startswith("C")
    quantity = df["Quantity"].astype(int)
    # Stock adjustments (negative quantity on an invoice, all priced 0) are not sales.
    df = df[df["cancelled"] | (quantity > 0)].copy()
    df["amount"] = [Decimal(q) * Decimal(p) for q, p in zip(df["Quantity"], df["UnitPrice"])]
    df["user_key"] = [f"{int(float(c))}" if c else f"guest-{inv}" for c, inv in zip(df["CustomerID"], df["InvoiceNo"])]
    df["at"] = pd.to_datetime(df["InvoiceDate"]).dt.tz_localize("UTC")
    invoices = df.groupby("InvoiceNo").agg(user_key=("user_key", "first"), cancelled=("cancelled", "first"),
                                           at=("at", "min"), amount=("amount", "sum"))
    orders = invoices[~invoices["cancelled"]]
    users = pd.DataFrame({
        "events": invoices.groupby("user_key").size(),
        "revenue": invoices.groupby("user_key")["amount"].sum(),  # cancellations' quantities are negative
        "orders": orders.groupby("user_key").size(),
        "first_purchase_at": orders.groupby("user_key")["at"].min(),
        "last_purchase_at": orders.groupby("user_key")["at"].max(),
    })
    users["orders"] = users["orders"].fillna(0).astype(int)
    return {"users": users, "invoices": len(invoices), "orders": len(orders),
            "refunds": int(invoices["cancelled"].sum()), "skipped": 245_903 - len(df),
            "guests": int(invoices["user_key"].str.startswith("guest-").sum()),
            "latest_order_at": orders["at"].max(), "total_revenue": total_revenue}


def rfm_group(r: int, f: int) -> str:
    """The README's named groups: the first rule that matches."""
    if r >= 4 and f >= 4:
        return "champions"
    if r >= 3:
        return "loyal" if f >= 3 else "potential_loyalists"
    if f >= 3:
        return "at_risk"
    return "hibernating" if r == 2 else "lost"


def expected_rfm(users: pd.DataFrame, reference_date) -> pd.DataFrame:
    customers = users[(users["orders"] > 0) & ~users.index.str.startswith("guest-")].copy()
    customers["recency_days"] = [(reference_date - at.date()).days for at in customers["last_purchase_at"]]
    # A score is the fifth of customers that a value starts in, counting the customers with a lower
    # value: the latest purchase, most orders and most money score 5, and tied values share a score.
    for score, column in (("r_score", "last_purchase_at"), ("f_score", "orders"), ("m_score", "revenue")):
        ordered = sorted(customers[column])
        customers[score] = [1 + 5 * bisect.bisect_left(ordered, value) // len(ordered) for value in customers[column]]
    customers["rfm_score"] = 100 * customers["r_score"] + 10 * customers["f_score"] + customers["m_score"]
    customers["rfm_group"] = [rfm_group(r, f) for r, f in zip(customers["r_score"], customers["f_score"])]
    return customers


def expected_rees46() -> pd.DataFrame:
    df = pd.read_csv(REES46, dtype=str, keep_default_na=False)
    df["at"] = pd.to_datetime(df["event_time"].str.removesuffix(" UTC")).dt.tz_localize("UTC")
    df["price"] = df["price"].map(Decimal)
    kinds = pd.crosstab(df["user_id"], df["event_type"])
    purchases = df[df["event_type"] == "purchase"]
    return pd.DataFrame({
        "events": df.groupby("user_id").size(),
        "product_views": kinds.get("view", 0),
        "cart_adds": kinds.get("cart", 0),
        "cart_removes": kinds.get("remove_from_cart", 0),
        "orders": purchases.groupby("user_id").size(),
        "revenue": purchases.groupby("user_id")["price"].sum(),
        "first_purchase_at": purchases.groupby("user_id")["at"].min(),
        "last_purchase_at": purchases.groupby("user_id")["at"].max(),
    })


# ---- the pipeline ---------------------------------------------------------------------------------

def replay(collector: str, write_key: str, path) -> str:
    run = subprocess.run([sys.executable, "-m", "spoor.cli", "replay", str(path), "--collector-url", collector,
                          "--write-key", write_key], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "replay [" in run.stderr  # the progress bar
    # the data sets are years old: the replay says the default retention would delete them
    assert "events are older than the events' retention (SPOOR_RETENTION_EVENTS_DAYS=395)" in run.stdout
    return run.stdout


def printed_count(output: str, label: str) -> int:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d,]+)\s*$", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return int(match.group(1).replace(",", ""))


def count_events(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM events")).scalar_one()


def worker_duplicates(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    match = re.search(r'^spoor_worker_events_total\{outcome="duplicate"\} (\S+)$', body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def profiles(engine, user_keys) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM user_profiles WHERE user_key = ANY(:keys)"),
                            {"keys": list(user_keys)}).mappings().all()
    return pd.DataFrame([dict(r) for r in rows]).set_index("user_key")


@pytest.fixture(scope="module")
def worker(start_process):
    return start_process("worker")


@pytest.fixture(scope="module")
def retail_truth():
    return expected_online_retail()


@pytest.fixture(scope="module")
def online_retail(collector, worker, write_key, engine, retail_truth):
    output = replay(collector, write_key, ONLINE_RETAIL)
    wait_until(lambda: count_events(engine) >= retail_truth["invoices"], DRAIN_TIMEOUT_S,
               "the replayed Online Retail events in PostgreSQL", interval=1)
    return output


# ---- Online Retail ---------------------------------------------------------------------------------

def test_replay_prints_what_it_sent(online_retail, retail_truth):
    assert printed_count(online_retail, "Order Completed") == retail_truth["orders"]
    assert printed_count(online_retail, "Order Refunded") == retail_truth["refunds"]
    assert f"{retail_truth['invoices']:,} accepted, 0 rejected" in online_retail
    assert f"guest invoices (no CustomerID; anonymousId guest-<InvoiceNo>): {retail_truth['guests']:,}" in online_retail
    assert re.search(rf"^\s*{retail_truth['skipped']:,}\s+stock adjustment: Quantity <= 0 on an invoice",
                     online_retail, re.MULTILINE)


def test_every_customer_profile_matches_the_raw_file(online_retail, retail_truth, engine):
    expected = retail_truth["users"]
    actual = profiles(engine, expected.index)
    assert count_events(engine) == retail_truth["invoices"]
    assert sorted(actual.index) == sorted(expected.index)
    actual = actual.loc[expected.index]
    for column in ("events", "orders", "revenue", "first_purchase_at", "last_purchase_at"):
        mismatched = [(key, actual.at[key, column], want) for key, want in expected[column].items()
                      if not _same(actual.at[key, column], want)]
        assert not mismatched, f"{column}: {len(mismatched)} users differ, e.g. {mismatched[:5]}"
    assert sum(actual["revenue"]) == retail_truth["total_revenue"]
    assert actual.at["17850", "orders"] == expected.at["17850", "orders"] > 0  # the README's example id


def test_rfm_scores_match_an_independent_computation(online_retail, retail_truth, engine):
    reference_date = retail_truth["latest_order_at"].date() + timedelta(days=1)
    assert str(reference_date) == "2011-07-01"  # the day after the file's last invoice
    expected = expected_rfm(retail_truth["users"], reference_date)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM user_rfm")).mappings().all()
    actual = pd.DataFrame([dict(r) for r in rows]).set_index("user_key")
    assert not set(actual.index) & set(expected_rees46().index), "run this test before the REES46 replay"
    assert sorted(actual.index) == sorted(expected.index) and len(actual) > 2500
    assert set(actual["reference_date"]) == {reference_date}
    actual = actual.loc[expected.index]
    for column, want in (("recency_days", "recency_days"), ("frequency", "orders"), ("monetary", "revenue"),
                         ("r_score", "r_score"), ("f_score", "f_score"), ("m_score", "m_score"),
                         ("rfm_score", "rfm_score"), ("rfm_group", "rfm_group")):
        mismatched = [(key, actual.at[key, column], value) for key, value in expected[want].items()
                      if actual.at[key, column] != value]
        assert not mismatched, f"{column}: {len(mismatched)} customers differ, e.g. {mismatched[:5]}"
    # Equal values, equal scores. Nearly half the customers ordered once: all of them are F = 1.
    for column, score in (("frequency", "f_score"), ("monetary", "m_score"), ("last_purchase_at", "r_score")):
        assert actual.groupby(column)[score].nunique().max() == 1
    assert set(actual.loc[actual["frequency"] == 1, "f_score"]) == {1}
    assert (actual["frequency"] == 1).sum() > 0.4 * len(actual)
    assert set(actual["rfm_group"]) == {"champions", "loyal", "potential_loyalists", "at_risk", "hibernating", "lost"}


def test_a_pinned_reference_date_moves_recency_only(online_retail, retail_truth, engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO rfm_reference (reference_date) VALUES ('2011-12-10')"))
        pinned = dict(conn.execute(text("SELECT user_key, recency_days FROM user_rfm")).all())
        conn.execute(text("DELETE FROM rfm_reference"))
        default = dict(conn.execute(text("SELECT user_key, recency_days FROM user_rfm")).all())
    assert pinned.keys() == default.keys()
    assert all(pinned[key] == default[key] + (pd.Timestamp("2011-12-10") - pd.Timestamp("2011-07-01")).days
               for key in default)


def test_a_second_replay_is_deduplicated(online_retail, retail_truth, collector, write_key, engine, test_settings):
    before = profiles(engine, retail_truth["users"].index).drop(columns="updated_at")
    duplicates_before = worker_duplicates(test_settings.worker_web_port)
    replay(collector, write_key, ONLINE_RETAIL)
    wait_until(lambda: worker_duplicates(test_settings.worker_web_port) - duplicates_before >= retail_truth["invoices"],
               DRAIN_TIMEOUT_S, "the worker to read the second replay", interval=1)
    after = profiles(engine, retail_truth["users"].index).drop(columns="updated_at")
    assert count_events(engine) == retail_truth["invoices"]
    pd.testing.assert_frame_equal(after.loc[before.index], before)


# ---- REES46 ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rees46(online_retail, collector, write_key, engine, retail_truth):
    output = replay(collector, write_key, REES46)
    wait_until(lambda: count_events(engine) >= retail_truth["invoices"] + 1000, DRAIN_TIMEOUT_S,
               "the replayed REES46 events in PostgreSQL", interval=1)
    return output


def test_rees46_profiles_match_the_raw_file(rees46, engine):
    expected = expected_rees46()
    assert printed_count(rees46, "Product Viewed") == expected["product_views"].sum() == 987
    assert printed_count(rees46, "Order Completed") == expected["orders"].sum() == 10
    actual = profiles(engine, expected.index).loc[expected.index]
    expected["orders"] = expected["orders"].fillna(0).astype(int)
    expected["revenue"] = [r if isinstance(r, Decimal) else Decimal(0) for r in expected["revenue"]]
    for column in expected.columns:
        mismatched = [(key, actual.at[key, column], want) for key, want in expected[column].items()
                      if not _same(actual.at[key, column], want)]
        assert not mismatched, f"{column}: {len(mismatched)} users differ, e.g. {mismatched[:5]}"


def _same(actual, expected) -> bool:
    if pd.isna(expected):
        return actual is None or pd.isna(actual)
    if isinstance(expected, pd.Timestamp):
        return pd.Timestamp(actual) == expected
    return actual == expected


# ---- sessions and funnels (behaviour analytics) -----------------------------------------------------
# Independent of Spoor's code: pandas over the raw files. REES46 rows carry the shop's own session id
# (user_session, sent as context.sessionId); Online Retail invoices have none, so their sessions are
# split at gaps of more than 30 minutes between a customer's invoices (SPOOR_SESSION_INACTIVITY_S).

INACTIVITY = pd.Timedelta(minutes=30)


def expected_retail_sessions() -> pd.DataFrame:
    df = pd.read_csv(ONLINE_RETAIL, dtype=str, keep_default_na=False)
    df = df[df["InvoiceNo"].str.startswith("C") | (df["Quantity"].astype(int) > 0)].copy()
    df["amount"] = [Decimal(q) * Decimal(p) for q, p in zip(df["Quantity"], df["UnitPrice"])]
    df["user_key"] = [f"{int(float(c))}" if c else f"guest-{inv}" for c, inv in zip(df["CustomerID"], df["InvoiceNo"])]
    df["at"] = pd.to_datetime(df["InvoiceDate"]).dt.tz_localize("UTC")
    invoices = df.groupby("InvoiceNo").agg(user_key=("user_key", "first"), at=("at", "min"),
                                           amount=("amount", "sum")).reset_index()
    invoices["order"] = ~invoices["InvoiceNo"].str.startswith("C")
    invoices = invoices.sort_values(["user_key", "at"], kind="stable")
    gap = invoices.groupby("user_key")["at"].diff()
    invoices["session"] = (gap.isna() | (gap > INACTIVITY)).cumsum()
    invoices["order_amount"] = [a if o else Decimal(0) for a, o in zip(invoices["amount"], invoices["order"])]
    return invoices.groupby("session").agg(
        user_key=("user_key", "first"), started_at=("at", "min"), ended_at=("at", "max"), events=("at", "size"),
        purchases=("order", "sum"), revenue=("order_amount", "sum"))


def expected_rees46_sessions() -> pd.DataFrame:
    df = pd.read_csv(REES46, dtype=str, keep_default_na=False)
    df["at"] = pd.to_datetime(df["event_time"].str.removesuffix(" UTC")).dt.tz_localize("UTC")
    df["price"] = df["price"].map(Decimal)
    for kind in ("view", "cart", "purchase"):
        df[kind] = df["event_type"] == kind
    df["purchase_amount"] = [p if b else Decimal(0) for p, b in zip(df["price"], df["purchase"])]
    return df.groupby(["user_id", "user_session"]).agg(
        started_at=("at", "min"), ended_at=("at", "max"), events=("at", "size"), product_views=("view", "sum"),
        cart_adds=("cart", "sum"), purchases=("purchase", "sum"), revenue=("purchase_amount", "sum"))


def daily_funnel(sessions: pd.DataFrame) -> pd.DataFrame:
    """Sessions per UTC day of their start that reached each step (views, carts, orders)."""
    steps = pd.DataFrame({"day": sessions["started_at"].dt.date, "sessions": 1,
                          "viewed": sessions.get("product_views", 0) > 0,
                          "carted": sessions.get("cart_adds", 0) > 0, "purchased": sessions["purchases"] > 0})
    return steps.groupby("day")[["sessions", "viewed", "carted", "purchased"]].sum().astype(int)


def stored_sessions(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM sessions")).mappings().all()
    sessions = pd.DataFrame([dict(r) for r in rows])
    for column in ("started_at", "ended_at"):
        sessions[column] = pd.to_datetime(sessions[column], utc=True)
    return sessions


def test_rees46_sessions_match_the_raw_file(rees46, engine):
    expected = expected_rees46_sessions()
    stored = stored_sessions(engine)
    actual = stored[stored["client_session"]].set_index(["user_key", "session_id"]).sort_index()
    assert len(actual) == len(expected) == 372
    # Sessions per user.
    assert actual.groupby(level=0).size().to_dict() == expected.groupby(level=0).size().to_dict()
    assert list(actual.index) == list(expected.index)
    for column in ("started_at", "ended_at", "events", "product_views", "cart_adds", "purchases", "revenue"):
        mismatched = [(key, actual.at[key, column], want) for key, want in expected[column].items()
                      if not _same(actual.at[key, column], want)]
        assert not mismatched, f"{column}: {len(mismatched)} sessions differ, e.g. {mismatched[:5]}"


def test_online_retail_sessions_match_the_raw_file(online_retail, engine):
    expected = expected_retail_sessions().set_index(["user_key", "started_at"]).sort_index()
    stored = stored_sessions(engine)
    actual = stored[~stored["client_session"] & ~stored["user_key"].isin(expected_rees46().index)]
    actual = actual.set_index(["user_key", "started_at"]).sort_index()
    assert len(actual) == len(expected)
    assert actual.groupby(level=0).size().to_dict() == expected.groupby(level=0).size().to_dict()
    for column in ("ended_at", "events", "purchases", "revenue"):
        mismatched = [(key, actual.at[key, column], want) for key, want in expected[column].items()
                      if not _same(actual.at[key, column], want)]
        assert not mismatched, f"{column}: {len(mismatched)} sessions differ, e.g. {mismatched[:5]}"


def test_daily_funnel_matches_the_raw_files(online_retail, rees46, engine):
    retail = expected_retail_sessions()
    expected = pd.concat([daily_funnel(retail), daily_funnel(expected_rees46_sessions())]).sort_index()
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM funnel_daily ORDER BY day")).mappings().all()
    actual = pd.DataFrame([dict(r) for r in rows]).set_index("day")
    assert list(actual.index) == list(expected.index)
    assert (actual[["sessions", "viewed", "carted", "purchased"]] == expected).all().all()
    rees_day = expected.loc[pd.Timestamp("2019-10-01").date()]
    row = actual.loc[pd.Timestamp("2019-10-01").date()]
    # The ratios, from the independent counts.
    assert float(row["view_to_cart"]) == round(rees_day["carted"] / rees_day["viewed"], 4)
    assert float(row["view_to_purchase"]) == round(rees_day["purchased"] / rees_day["viewed"], 4)
    rees = expected_rees46_sessions()
    abandoned = ((rees["cart_adds"] > 0) & (rees["purchases"] == 0)).sum() / (rees["cart_adds"] > 0).sum()
    assert float(row["cart_abandonment_rate"]) == round(abandoned, 4)
