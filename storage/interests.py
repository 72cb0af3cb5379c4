"""Interests and product affinity in PostgreSQL, written with the batch's events (issue 22).

``write_interests`` runs inside ``StreamWriter.write_batch``'s transaction, after the events, and takes
only the rows of events that were new to the ``events`` table: a redelivered batch adds nothing twice.
Weights are forward-decayed logarithms summed with ``spoor_log2_add`` (migration 0016,
stream_processors/interests.py), so batches may come in any order.

Rows are locked in key order in every statement, so two workers writing the same products cannot deadlock.
"""

import orjson

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
MERGE_AFFINITY = """
    INSERT INTO product_affinity AS x (product_id, neighbour_id, weight, bought)
    SELECT r.a, r.b, spoor_log2_sum(r.w), spoor_log2_sum(r.o)
      FROM json_to_recordset(%s::json) AS r(a text, b text, w float8, o float8)
     GROUP BY r.a, r.b
     ORDER BY r.a, r.b
    ON CONFLICT (product_id, neighbour_id) DO UPDATE
       SET weight = spoor_log2_add(x.weight, excluded.weight), bought = spoor_log2_add(x.bought, excluded.bought)
"""


def write_interests(cursor, batch: dict, new_event_ids: set[str]) -> None:
    """``batch``: ``stream_processors.interests.interest_batch`` of the batch's events (rows led by their id);
    ``new_event_ids``: the events the batch added to the ``events`` table, the only ones that count."""
    interests = [{"u": u, "f": f, "v": v, "w": w, "p": p}
                 for e, u, f, v, w, p in batch["interests"] if e in new_event_ids]
    popularity = [{"i": i, "c": c, "p": p, "w": w, "t": t, "b": b}
                  for e, i, c, p, w, t, b in batch["popularity"] if e in new_event_ids]
    pairs = [{"a": a, "b": b, "w": w, "o": w} for e, a, b, w in batch["pairs"] if e in new_event_ids]
    pairs += [{"a": a, "b": b, "w": w} for e, a, b, w in batch.get("seen_pairs", ()) if e in new_event_ids]
    if interests:
        cursor.execute(MERGE_INTERESTS, (orjson.dumps(interests).decode(),))
    if popularity:
        cursor.execute(MERGE_POPULARITY, (orjson.dumps(popularity).decode(),))
    if pairs:
        cursor.execute(MERGE_AFFINITY, (orjson.dumps(pairs).decode(),))
