"""Segment membership cost: full recompute vs an incremental pass over 1% changed users.

Creates a scratch database (dropped at the end) on the configured PostgreSQL, fills user_profiles,
user_activity and events with synthetic users in SQL, and prints medians over --repeat runs:

    .venv/bin/python bench/segment_membership.py --users 100000
"""

import argparse
import statistics
import time
import uuid
from datetime import datetime, timezone

from sqlalchemy import create_engine, text

from spoor.segments import membership
from spoor.segments.membership import SegmentStore
from spoor.segments.segment_language import parse_segment
from spoor.settings import Settings
from spoor.storage.migrate import upgrade
from tests.support.scratch_db import ScratchDatabase

FILL = """
INSERT INTO user_profiles (user_key, user_id, first_seen_at, last_seen_at, events, page_views, product_views,
    distinct_products_viewed, clicks, cart_adds, cart_removes, cart_value, checkouts, orders, revenue,
    first_purchase_at, last_purchase_at)
SELECT 'u' || i, CASE WHEN i % 10 > 0 THEN 'c' || i END, now() - interval '200 days', now() - (i % 30) * interval '1 day', 10, 3, 5, 4, 1, i % 4, 0, 0,
       i % 3, i % 7, (i % 7) * 25.5,
       CASE WHEN i % 7 > 0 THEN now() - (i % 180) * interval '1 day' END,
       CASE WHEN i % 7 > 0 THEN now() - (i % 120) * interval '1 day' END
  FROM generate_series(1, :n) AS i;
INSERT INTO user_activity (user_key, as_of, purchases_30d, favourite_category)
SELECT 'u' || i, now(), i % 3, (ARRAY['shoes', 'hats', 'bags'])[1 + (i / 3) % 3] FROM generate_series(1, :n) AS i;
INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source)
SELECT 'e' || i || '-' || k, 'u' || i, (ARRAY['product_view', 'cart_add', 'purchase'])[1 + (i + k) % 3],
       (ARRAY['Product Viewed', 'Product Added', 'Order Completed'])[1 + (i + k) % 3],
       now() - ((i * k) % 72) * interval '1 hour', now(), 'bench'
  FROM generate_series(1, :n) AS i, generate_series(1, 5) AS k;
ANALYZE;
"""
SEGMENTS = [
    {"name": "shoe_fans", "where": {"all": ["purchases_30d >= 2", 'favourite_category == "shoes"']}},
    {"name": "lapsed", "where": "days_since_last_purchase > 60"},
    {"name": "abandoners", "where": 'did "Product Added" in last 24h and not "Order Completed"'},
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--explain", help="print the plan of this segment's full refresh and stop")
    args = parser.parse_args()
    settings = Settings()
    database = ScratchDatabase(settings.database_url, f"spoor_bench_{uuid.uuid4().hex[:8]}")
    url = database.url
    try:
        upgrade(url)
        engine = create_engine(url)
        with engine.begin() as conn:
            for statement in filter(str.strip, FILL.split(";")):
                conn.execute(text(statement), {"n": args.users})
        store = SegmentStore(engine)
        store.install_builtins()
        for definition in SEGMENTS:
            store.save(parse_segment(definition), status="active")
        specs = store.specs()
        names = [d["name"] for d in SEGMENTS] + ["rfm_champions", "high_intent_browsers"]
        if args.explain:
            statement = membership.refresh_statement(specs[args.explain], specs, datetime.now(timezone.utc), None)
            compiled = statement.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                for (line,) in conn.exec_driver_sql("EXPLAIN ANALYZE " + str(compiled), compiled.params):
                    print(line)
                conn.rollback()
            names = []
        for name in names:
            full = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                membership.refresh(engine, specs[name], specs, datetime.now(timezone.utc))
                full.append(time.perf_counter() - started)
            size = len(membership.members(engine, name, 10_000_000))
            changed = [f"u{i}" for i in range(1, args.users + 1, 100)]  # 1% of users
            incremental = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                membership.refresh(engine, specs[name], specs, datetime.now(timezone.utc), changed)
                incremental.append(time.perf_counter() - started)
            f, i = statistics.median(full), statistics.median(incremental)
            print(f"{name:<22} members {size:>8}  full {f * 1000:8.1f} ms  incremental(1%) {i * 1000:8.1f} ms  "
                  f"ratio {f / i:6.1f}")
        engine.dispose()
    finally:
        database.drop()


if __name__ == "__main__":
    main()
