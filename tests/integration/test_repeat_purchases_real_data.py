"""``repeat_purchase_cohorts`` (migration 0022) on the UCI Online Retail orders, against pandas.

The view reads the ``events`` table. The orders are put there as ``spoor replay`` sends them (one
``Order Completed`` per invoice, order id = invoice number, ``guest-<InvoiceNo>`` for an invoice without
a customer; tests/e2e/test_real_data_replay.py proves the pipeline stores them so), each order twice
under two event ids as a client that resent it would (an order counts once). The expected cohorts are
computed from the raw file with pandas.
"""

import json
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd
import pytest
from sqlalchemy import text

from tests.support.local_stack import REPO

pytestmark = pytest.mark.integration

ONLINE_RETAIL = REPO.parent / "shared" / "data" / "online_retail_2010-12_2011-06.csv.gz"


def expected_cohorts() -> pd.DataFrame:
    df = pd.read_csv(ONLINE_RETAIL, dtype=str, keep_default_na=False)
    df = df[~df["InvoiceNo"].str.startswith("C") & (df["Quantity"].astype(int) > 0)]
    df["customer"] = [f"{int(float(c))}" if c else f"guest-{i}" for c, i in zip(df["CustomerID"], df["InvoiceNo"])]
    df["at"] = pd.to_datetime(df["InvoiceDate"]).dt.tz_localize("UTC")
    orders = df.groupby("InvoiceNo").agg(customer=("customer", "first"), at=("at", "min")).reset_index()
    orders = orders.sort_values(["customer", "at"], kind="stable")
    orders["n"] = orders.groupby("customer").cumcount()
    first = orders[orders["n"] == 0].set_index("customer")["at"]
    second = orders[orders["n"] == 1].set_index("customer")["at"].reindex(first.index)
    gap = second - first
    cohorts = pd.DataFrame({"cohort_month": [t.date().replace(day=1) for t in first], "gap": gap.values})
    return cohorts.groupby("cohort_month").agg(
        customers=("gap", "size"),
        **{f"repeat_{d}d": ("gap", lambda g, d=d: int((g <= pd.Timedelta(days=d)).sum())) for d in (30, 60, 90)}), \
        orders


def test_repeat_purchase_cohorts_on_online_retail(engine):
    want, orders = expected_cohorts()
    rows = [{"event_id": f"{number}-{copy}", "user_key": customer, "order_id": number,
             "event_time": (at + timedelta(seconds=copy)).isoformat()}
            for number, customer, at in zip(orders["InvoiceNo"], orders["customer"], orders["at"]) for copy in (0, 1)]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source, order_id) "
            "SELECT r.event_id, r.user_key, 'purchase', 'Order Completed', r.event_time, r.event_time, 'replay', "
            "r.order_id FROM json_to_recordset(CAST(:rows AS json)) "
            "AS r(event_id text, user_key text, order_id text, event_time timestamptz)"),
            {"rows": json.dumps(rows)})
        actual = pd.DataFrame([dict(r._mapping) for r in conn.execute(text(
            "SELECT * FROM repeat_purchase_cohorts ORDER BY cohort_month"))]).set_index("cohort_month")
    assert list(actual.index) == list(want.index) and len(want) == 7  # Dec 2010 to Jun 2011
    for column in ("customers", "repeat_30d", "repeat_60d", "repeat_90d"):
        assert list(actual[column]) == list(want[column]), column
    for days in (30, 60, 90):
        rates = [(Decimal(int(r)) / Decimal(int(c))).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
                 for r, c in zip(want[f"repeat_{days}d"], want["customers"])]
        assert list(actual[f"repeat_rate_{days}d"]) == rates
    december = actual.loc[pd.Timestamp("2010-12-01").date()]
    assert december["repeat_30d"] < december["repeat_60d"] < december["repeat_90d"]  # the windows differ
