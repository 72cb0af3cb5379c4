"""Interests and product affinity in PostgreSQL, written with the batch's events (issue 22).

``write_interests`` runs inside ``StreamWriter.write_batch``'s transaction, after the events, and takes
only the rows of events that were new to the ``events`` table: a redelivered batch adds nothing twice.
Weights are forward-decayed logarithms summed with ``spoor_log2_add`` (migration 0016,
stream_processors/interests.py), so batches may come in any order.

Products viewed or added to the cart by one user within ``SESSION_WINDOW`` of each other are paired here,
where the user's earlier events are: each new event is paired with the (at most ``MAX_SESSION_PAIRS``)
nearest such events of the user, and a pair of two new events is counted once. Rows are locked in key
order in every statement, so two workers writing the same products cannot deadlock.
"""

from collections.abc import Sequence

import orjson

SESSION_WINDOW = "30 minutes"  # the default session inactivity (SPOOR_SESSION_INACTIVITY_S)
MAX_SESSION_PAIRS = 10
PAIRED_KINDS = ("product_view", "cart_add")

MERGE_INTERESTS = """
    INSERT INTO user_interests AS i (user_key, facet, value, weight, price)
    SELECT r.u, r.f, r.v, spoor_log2_sum(r.w), (array_agg(r.p ORDER BY r.w DESC) FILTER (WHERE r.p IS NOT NULL))[1]
      FROM json_to_recordset(%s::json) AS r(u text, f text, v text, w float8, p numeric)
     GROUP BY r.u, r.f, r.v
     ORDER BY r.u, r.f, r.v
    ON CONFLICT (user_key, facet, value) DO UPDATE
       SET weight = spoor_log2_add(i.weight, excluded.weight), price = coalesce(excluded.price, i.price),
           updated_at = now()
"""
MERGE_POPULARITY = """
    INSERT INTO product_popularity AS p (product_id, category, price, weight, trend, bought)
    SELECT r.i, (array_agg(r.c ORDER BY r.w DESC) FILTER (WHERE r.c IS NOT NULL))[1],
           (array_agg(r.p ORDER BY r.w DESC) FILTER (WHERE r.p IS NOT NULL))[1],
           spoor_log2_sum(r.w), spoor_log2_sum(r.t), spoor_log2_sum(r.b)
      FROM json_to_recordset(%s::json) AS r(i text, c text, p numeric, w float8, t float8, b float8)
     GROUP BY r.i
     ORDER BY r.i
    ON CONFLICT (product_id) DO UPDATE
       SET category = coalesce(excluded.category, p.category), price = coalesce(excluded.price, p.price),
           weight = spoor_log2_add(p.weight, excluded.weight), trend = spoor_log2_add(p.trend, excluded.trend),
           bought = spoor_log2_add(p.bought, excluded.bought), updated_at = now()
"""
MERGE_AFFINITY = f"""
    WITH new_events AS (
        SELECT e.event_id, e.user_key, e.product_id, e.kind, e.event_time
          FROM events e WHERE e.event_id = ANY(%(paired)s)
    ), together AS (
        SELECT n.product_id AS a, o.product_id AS b,
               CASE WHEN n.kind = 'cart_add' AND o.kind = 'cart_add' THEN 1 ELSE 0 END
                 + extract(epoch FROM greatest(n.event_time, o.event_time)) / %(half_life_s)s AS w
          FROM new_events n
         CROSS JOIN LATERAL (
               SELECT v.product_id, v.kind, v.event_time FROM events v
                WHERE v.user_key = n.user_key
                  AND v.event_time BETWEEN n.event_time - interval '{SESSION_WINDOW}'
                                       AND n.event_time + interval '{SESSION_WINDOW}'
                  AND v.kind IN {PAIRED_KINDS} AND v.product_id IS NOT NULL AND v.product_id <> n.product_id
                  AND NOT (v.event_id = ANY(%(paired)s) AND (v.event_time, v.event_id) >= (n.event_time, n.event_id))
                ORDER BY abs(extract(epoch FROM v.event_time - n.event_time)), v.event_id
                LIMIT {MAX_SESSION_PAIRS}) o
    ), pairs AS (
        SELECT a, b, w, NULL::float8 AS bought FROM together
        UNION ALL SELECT b, a, w, NULL FROM together
        UNION ALL SELECT r.a, r.b, r.w, r.w FROM json_to_recordset(%(orders)s::json) AS r(a text, b text, w float8)
    )
    INSERT INTO product_affinity AS x (product_id, neighbour_id, weight, bought)
    SELECT a, b, spoor_log2_sum(w), spoor_log2_sum(bought) FROM pairs
     GROUP BY a, b
     ORDER BY a, b
    ON CONFLICT (product_id, neighbour_id) DO UPDATE
       SET weight = spoor_log2_add(x.weight, excluded.weight), bought = spoor_log2_add(x.bought, excluded.bought)
"""


def write_interests(cursor, batch: dict, events: Sequence, new_event_ids: set[str]) -> None:
    """``batch``: ``stream_processors.interests.interest_batch`` of ``events`` (rows led by their event id);
    ``new_event_ids``: the events the batch added to the ``events`` table, the only ones that count."""
    paired = [e.event_id for e in events if e.event_id in new_event_ids and e.kind in PAIRED_KINDS and e.product_id]
    interests = [{"u": u, "f": f, "v": v, "w": w, "p": p}
                 for e, u, f, v, w, p in batch["interests"] if e in new_event_ids]
    popularity = [{"i": i, "c": c, "p": p, "w": w, "t": t, "b": b}
                  for e, i, c, p, w, t, b in batch["popularity"] if e in new_event_ids]
    orders = [{"a": a, "b": b, "w": w} for e, a, b, w in batch["pairs"] if e in new_event_ids]
    if interests:
        cursor.execute(MERGE_INTERESTS, (orjson.dumps(interests).decode(),))
    if popularity:
        cursor.execute(MERGE_POPULARITY, (orjson.dumps(popularity).decode(),))
    if orders or paired:
        cursor.execute(MERGE_AFFINITY, {"paired": paired, "orders": orjson.dumps(orders).decode(),
                                        "half_life_s": batch["half_life_s"]})
