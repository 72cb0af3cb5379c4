"""Interests and product affinity in PostgreSQL, written with the batch's events (issue 22).

``write_interests`` runs inside ``StreamWriter.write_batch``'s transaction, after the events, and takes
only the rows of events that were new to the ``events`` table: a redelivered batch adds nothing twice.
Weights are forward-decayed logarithms summed with ``spoor_log2_add`` (migration 0016,
stream_processors/interests.py), so batches may come in any order.

Rows are locked in key order in every statement, so two workers writing the same products cannot deadlock.
"""

import orjson

from spoor.decay import log2_add
from spoor.storage.prepared import execute

MERGE_INTERESTS = """
    INSERT INTO user_interests AS i (user_key, facet, value, weight, price)
    SELECT r.u, r.f, r.v, r.w, r.p FROM json_to_recordset(%s::json) AS r(u text, f text, v text, w float8, p numeric)
     ORDER BY r.u, r.f, r.v
    ON CONFLICT (user_key, facet, value) DO UPDATE
       SET weight = spoor_log2_add(i.weight, excluded.weight), price = coalesce(excluded.price, i.price),
           updated_at = now()
"""
MERGE_POPULARITY = """
    INSERT INTO product_popularity AS p (product_id, category, price, weight, trend, bought)
    SELECT r.i, r.c, r.p, r.w, r.t, r.b
      FROM json_to_recordset(%s::json) AS r(i text, c text, p numeric, w float8, t float8, b float8)
     ORDER BY r.i
    ON CONFLICT (product_id) DO UPDATE
       SET category = coalesce(excluded.category, p.category), price = coalesce(excluded.price, p.price),
           weight = spoor_log2_add(p.weight, excluded.weight), trend = spoor_log2_add(p.trend, excluded.trend),
           bought = spoor_log2_add(p.bought, excluded.bought), updated_at = now()
"""
MERGE_AFFINITY = """
    INSERT INTO product_affinity AS x (product_id, neighbour_id, weight, bought)
    SELECT r.a, r.b, r.w, r.o FROM json_to_recordset(%s::json) AS r(a text, b text, w float8, o float8)
     ORDER BY r.a, r.b
    ON CONFLICT (product_id, neighbour_id) DO UPDATE
       SET weight = spoor_log2_add(x.weight, excluded.weight), bought = spoor_log2_add(x.bought, excluded.bought)
"""


def write_interests(cursor, batch: dict, new_event_ids: set[str]) -> None:
    """``batch``: ``stream_processors.interests.interest_batch`` of the batch's events (rows led by their id);
    ``new_event_ids``: the events the batch added to the ``events`` table, the only ones that count. Rows of
    one key are added up here first (one upserted row per key: PostgreSQL's aggregate costs more)."""
    interests: dict[tuple, list] = {}
    for e, u, f, v, w, p in batch["interests"]:
        if e in new_event_ids:
            summed = interests.get((u, f, v))
            if summed is None:
                interests[(u, f, v)] = [w, p, w]
            else:
                summed[0] = log2_add(summed[0], w)
                if p is not None and (summed[1] is None or w >= summed[2]):  # the latest event's price
                    summed[1], summed[2] = p, w
    popularity: dict[str, list] = {}
    for e, i, c, p, w, t, b in batch["popularity"]:
        if e in new_event_ids:
            summed = popularity.get(i)
            if summed is None:
                popularity[i] = [c, p, w, t, b]
            else:
                if w >= summed[2]:  # the latest event's category and price, when it has them
                    summed[0], summed[1] = c or summed[0], p or summed[1]
                summed[2], summed[3], summed[4] = log2_add(summed[2], w), log2_add(summed[3], t), log2_add(summed[4], b)
    pairs: dict[tuple, list] = {}
    for rows, bought in ((batch["pairs"], True), (batch.get("seen_pairs", ()), False)):
        for e, a, b, w in rows:
            if e in new_event_ids:
                summed = pairs.setdefault((a, b), [None, None])
                summed[0] = log2_add(summed[0], w)
                if bought:
                    summed[1] = log2_add(summed[1], w)
    if interests:
        execute(cursor, "spoor_merge_interests", MERGE_INTERESTS, orjson.dumps(
            [{"u": u, "f": f, "v": v, "w": w, "p": p} for (u, f, v), (w, p, _) in interests.items()]).decode())
    if popularity:
        execute(cursor, "spoor_merge_popularity", MERGE_POPULARITY, orjson.dumps(
            [{"i": i, "c": c, "p": p, "w": w, "t": t, "b": b} for i, (c, p, w, t, b) in popularity.items()]).decode())
    if pairs:
        execute(cursor, "spoor_merge_affinity", MERGE_AFFINITY, orjson.dumps(
            [{"a": a, "b": b, "w": w, "o": o} for (a, b), (w, o) in pairs.items()]).decode())
