"""Real shoppers (REES46 sample): sessions per user and funnel conversion per day, computed by Spoor
from events replayed through the collector, equal DuckDB's computation from the raw file.

Mapping of a REES46 row to a Segment message: ``view`` -> Product Viewed, ``cart`` -> Product Added,
``remove_from_cart`` -> Product Removed, ``purchase`` -> Order Completed with one product line
(revenue = price); userId = user_id, context.sessionId = user_session (the client session id),
category = category_code, timestamp = event_time (UTC), messageId = "rees46-<row number>".
"""

import csv
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from sqlalchemy import text

from spoor.collector_client import CollectorClient
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REES46 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "rees46_2019-10_sample_1000.csv"
EVENTS = {"view": "Product Viewed", "cart": "Product Added", "remove_from_cart": "Product Removed",
          "purchase": "Order Completed"}


def rees46_messages(path: Path) -> list[dict]:
    messages = []
    with open(path, newline="") as f:
        for number, row in enumerate(csv.DictReader(f), start=1):
            at = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S UTC").isoformat() + "Z"
            product = {"product_id": row["product_id"], "category": row["category_code"] or None,
                       "brand": row["brand"] or None, "price": row["price"]}
            properties = dict(product)
            if row["event_type"] == "purchase":
                properties.update(revenue=row["price"], products=[{**product, "quantity": 1}])
            messages.append({"type": "track", "event": EVENTS[row["event_type"]], "userId": row["user_id"],
                             "messageId": f"rees46-{number}", "timestamp": at,
                             "context": {"sessionId": row["user_session"]}, "properties": properties})
    return messages


def test_rees46_sessions_and_daily_funnel_match_duckdb(collector, write_key, engine, start_process):
    start_process("worker")
    messages = rees46_messages(REES46)
    client = CollectorClient(collector, write_key)
    for i in range(0, len(messages), 100):
        assert client.send_batch(messages[i:i + 100])[0] == 200
    client.close()

    def query(sql: str) -> list:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]

    wait_until(lambda: query("SELECT count(*) FROM events")[0][0] == len(messages), 90, "the replay to be stored")

    raw = duckdb.connect()
    raw.execute(f"CREATE VIEW rees AS SELECT * FROM read_csv('{REES46}', header=true, all_varchar=true)")
    raw.execute("CREATE VIEW rows AS SELECT strptime(event_time, '%Y-%m-%d %H:%M:%S UTC') AS event_at, event_type, "
                "user_id, user_session, CAST(price AS DECIMAL(18, 4)) AS price FROM rees")

    # Sessions per user.
    want = raw.execute("SELECT user_id, count(DISTINCT user_session) FROM rows GROUP BY 1 ORDER BY 1").fetchall()
    got = query("SELECT user_key, count(*) FROM sessions GROUP BY 1 ORDER BY 1")
    assert got == want and len(want) == 330

    # Every session: start, end, events, views, carts, purchases, revenue.
    want = raw.execute(
        "SELECT user_id, user_session, min(event_at), max(event_at), count(*), count(*) FILTER (WHERE event_type = 'view'), "
        "count(*) FILTER (WHERE event_type = 'cart'), count(*) FILTER (WHERE event_type = 'purchase'), "
        "coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) FROM rows GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    got = query("SELECT user_key, session_id, started_at AT TIME ZONE 'UTC', ended_at AT TIME ZONE 'UTC', events, "
                "product_views, cart_adds, purchases, revenue FROM sessions ORDER BY 1, 2")
    assert [(*r[:8], Decimal(r[8])) for r in got] == [(*r[:8], Decimal(r[8])) for r in want]

    # Funnel conversion per day (the day a session started): sessions that viewed, carted, purchased.
    want = raw.execute(
        "WITH s AS (SELECT user_session, min(event_at)::date AS day, bool_or(event_type = 'view') AS viewed, "
        "bool_or(event_type = 'cart') AS carted, bool_or(event_type = 'purchase') AS purchased "
        "FROM rows GROUP BY 1) "
        "SELECT day, count(*), count(*) FILTER (WHERE viewed), count(*) FILTER (WHERE carted), count(*) FILTER (WHERE purchased), "
        "round(count(*) FILTER (WHERE carted) / count(*) FILTER (WHERE viewed), 4), "
        "round(count(*) FILTER (WHERE purchased) / count(*) FILTER (WHERE viewed), 4), "
        "round(count(*) FILTER (WHERE carted AND NOT purchased) / count(*) FILTER (WHERE carted), 4) "
        "FROM s GROUP BY 1 ORDER BY 1").fetchall()
    got = query("SELECT day, sessions, viewed, carted, purchased, view_to_cart, view_to_purchase, "
                "cart_abandonment_rate FROM funnel_daily ORDER BY 1")
    assert [(*r[:5], *(float(x) for x in r[5:])) for r in got] == [(*r[:5], *(float(x) for x in r[5:])) for r in want]
