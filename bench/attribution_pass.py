"""Channel attribution pass cost (segments/attribution.py): every person, then 1% changed, then an idle pass.

Creates a scratch database (dropped at the end) on the configured PostgreSQL and fills it in SQL with
synthetic people: 10 sessions each over 120 days (UTM, referrer or direct), 3 orders each, a refund for
one person in five. Prints wall time and the runner's own CPU time (the rest is PostgreSQL):

    PYTHONPATH=. .venv/bin/python bench/attribution_pass.py
"""

import time
import uuid
from datetime import timedelta

from sqlalchemy import create_engine, text

from spoor.segments.attribution import attribute_people, attribution_pass
from spoor.settings import Settings
from spoor.storage.migrate import upgrade
from tests.support.scratch_db import ScratchDatabase

db = ScratchDatabase(Settings().database_url, "attr_bench_" + uuid.uuid4().hex[:8])
try:
    upgrade(db.url)
    engine = create_engine(db.url)
    with engine.begin() as c:
        c.execute(text("""INSERT INTO user_profiles (user_key, first_seen_at, last_seen_at, events, page_views, product_views,
          distinct_products_viewed, clicks, cart_adds, cart_removes, cart_value, checkouts, orders, revenue)
          SELECT 'p' || g, now(), now(), 1,0,0,0,0,0,0,0,0,0,0 FROM generate_series(1, 20000) g"""))
        c.execute(text("""INSERT INTO sessions (user_key, session_id, opened_at, client_session, started_at, ended_at,
          duration_s, events,
          page_views, product_views, cart_adds, checkouts, purchases, revenue, reached_cart, reached_checkout, reached_purchase,
          utm_source, utm_medium, referrer)
          SELECT 'p' || g, 's' || s, t, true, t, t, 0, 1,1,0,0,0,0,0,false,false,false,
                 (ARRAY['google','newsletter',NULL,NULL])[1 + (g * 7 + s) % 4], (ARRAY['cpc','email',NULL])[1 + (g + s) % 3],
                 (ARRAY['https://www.bing.com/', NULL])[1 + s % 2]
            FROM generate_series(1, 20000) g, generate_series(1, 10) s,
                 LATERAL (SELECT timestamptz '2026-01-01' + ((g * 31 + s * 977) % 120) * interval '1 day' + s * interval '1 minute') x(t)"""))
        c.execute(text("""INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source, order_id, revenue, currency)
          SELECT 'e' || g || '-' || o, 'p' || g, CASE WHEN o = 4 THEN 'refund' ELSE 'purchase' END, 'x',
                 timestamptz '2026-01-10' + ((g * 13 + o * 331) % 110) * interval '1 day', now(), 't', 'o' || least(o, 3),
                 ((g * o) % 10000) / 100.0, 'EUR'
            FROM generate_series(1, 20000) g, generate_series(1, 4) o WHERE o < 4 OR g % 5 = 0"""))
    keys = [f"p{g}" for g in range(1, 20001)]
    for label, ks in (("all 20,000 people", keys), ("200 changed people", keys[:200])):
        w, cpu = time.perf_counter(), time.process_time()
        rows = attribute_people(engine, ks, timedelta(days=30))
        print(f"{label}: {rows} rows, wall {time.perf_counter() - w:.2f} s, runner CPU {time.process_time() - cpu:.2f} s")
    w = time.perf_counter(); r = attribution_pass(engine, timedelta(days=30), 10); print("first pass", r, f"{time.perf_counter()-w:.2f} s")
    w = time.perf_counter(); r = attribution_pass(engine, timedelta(days=30), 0); print("idle pass", r, f"{(time.perf_counter()-w)*1000:.1f} ms")
    engine.dispose()
finally:
    db.drop()
