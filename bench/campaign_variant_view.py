"""What the dashboard's campaign panel costs: campaign_variant_results (migration 0029, computed when read)
against the experiment report it mirrors (campaign_dispatch.report), on one campaign with 100,000
deliveries (a fifth in the holdout, two variants) and 60,000 orders, a tenth refunded in part.

Creates a scratch database (dropped at the end) on the configured PostgreSQL; prints each reading's
PostgreSQL execution time (JIT on and off: the view's estimated cost passes jit_above_cost) and the
report's wall time:

    PYTHONPATH=. .venv/bin/python bench/campaign_variant_view.py
"""

import json
import time
import uuid

from sqlalchemy import create_engine, text

from spoor.campaigns import campaign_dispatch
from spoor.campaigns.campaign_spec import parse_campaign
from spoor.settings import Settings
from spoor.storage.migrate import upgrade
from tests.support.scratch_db import ScratchDatabase

DEFINITION = {"name": "big", "audience": {"trigger": "cart_abandonment"}, "action": {"kafka_topic": "bench"},
              "holdout_percent": 20, "cost_per_message": 0.1,
              "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}

db = ScratchDatabase(Settings().database_url, "variant_bench_" + uuid.uuid4().hex[:8])
try:
    upgrade(db.url)
    engine = create_engine(db.url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO campaigns (name, definition, status) VALUES ('big', CAST(:d AS jsonb), 'active')"),
                  {"d": json.dumps(parse_campaign(DEFINITION).model_dump(mode="json"))})
        c.execute(text("""INSERT INTO campaign_deliveries (campaign, user_key, episode, idempotency_key, triggered_at,
                          due_at, next_attempt_at, status, variant, attempts)
          SELECT 'big', 'u' || i, '1', 'k' || i, timestamptz '2026-03-01' + i * interval '1 second', now(), now(),
                 CASE WHEN i % 5 = 0 THEN 'holdout' ELSE 'sent' END,
                 CASE WHEN i % 5 = 0 THEN NULL WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, 1
            FROM generate_series(1, 100000) i"""))
        c.execute(text("""INSERT INTO events (event_id, user_key, kind, name, event_time, received_at, source, order_id,
                          revenue)
          SELECT 'e' || i || '-' || k, 'u' || (i * 7 % 100000 + 1), k, 'x',
                 timestamptz '2026-03-01' + (i * 7 % 100000 + 1) * interval '1 second'
                   + CASE k WHEN 'purchase' THEN interval '2 days' ELSE interval '9 days' END,
                 now(), 'bench', 'o' || i, CASE k WHEN 'purchase' THEN (i % 97) + 0.5 ELSE 5 END
            FROM generate_series(1, 60000) i, unnest(ARRAY['purchase', 'refund']) k
           WHERE k = 'purchase' OR i % 10 = 0"""))
        c.execute(text("ANALYZE"))
    with engine.connect() as c:
        for jit in ("on", "off", "on", "off"):
            c.execute(text(f"SET jit = {jit}"))
            plan = c.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM campaign_variant_results")).scalar()
            print(f"view, jit {jit}: {plan[0]['Execution Time'] / 1000:.2f} s")
    for _ in range(2):
        started = time.perf_counter()
        campaign_dispatch.report(engine, "big")
        print(f"report: {time.perf_counter() - started:.2f} s")
    engine.dispose()
finally:
    db.drop()
