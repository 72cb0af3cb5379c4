"""Interests and product affinity in PostgreSQL, written with the batch's events (issue 22).

``write_interests`` runs inside ``StreamWriter.write_batch``'s transaction, after the events, and takes
only the rows of events that were new to the ``events`` table: a redelivered batch adds nothing twice.
Weights are forward-decayed logarithms summed with ``spoor_log2_add`` (migration 0016,
stream_processors/interests.py), so batches may come in any order.

- ``user_interests`` (per user) is upserted there; rows are locked in key order, so two workers writing
  the same users cannot deadlock.
- Product popularity and affinity are shared by every user's events: upserting them was 42 % of the
  workers' statement time in PostgreSQL, and the workers waited on each other's row locks on popular
  products (issue 25). The worker appends the batch's rows, summed per key within the batch, to
  ``product_popularity_deltas`` and ``product_affinity_deltas`` by COPY (migration 0031); the segments
  runner folds them into ``product_popularity`` and ``product_affinity`` each turn, before it makes the
  recommendation lists (``fold_product_deltas``). Each fold statement deletes the rows it sees and adds
  their sums in one snapshot: rows a worker commits meanwhile wait for the next fold, none is lost or
  counted twice. The sums are the upserts' to float rounding; the category and price are the latest
  a batch gave (by ``id``, the order of the appends) over what the row had.
"""

import io
import time
from typing import NamedTuple

import orjson

from spoor.decay import log2_add
from spoor.storage.copy_format import NULL, text_field
from spoor.storage.prepared import execute

MERGE_INTERESTS = """
    INSERT INTO user_interests AS i (user_key, facet, value, weight, price)
    SELECT r.u, r.f, r.v, r.w, r.p FROM json_to_recordset(%s::json) AS r(u text, f text, v text, w float8, p numeric)
     ORDER BY r.u, r.f, r.v
    ON CONFLICT (user_key, facet, value) DO UPDATE
       SET weight = spoor_log2_add(i.weight, excluded.weight), price = coalesce(excluded.price, i.price),
           updated_at = now()
"""
# The worker's upserts of the product tables before migration 0031 (bench/worker_writes.py, tests: the rule).
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

COPY_POPULARITY = "COPY product_popularity_deltas (product_id, category, price, weight, trend, bought) FROM STDIN"
COPY_AFFINITY = "COPY product_affinity_deltas (product_id, neighbour_id, weight, bought) FROM STDIN"

# The segments runner's fold (migration 0031 has the same SQL for its downgrade). One statement per table: the
# DELETE's snapshot is the sums' snapshot. log2 of a sum of 2^w is max + log2(sum(2^(w - max))), each term
# floored as spoor_log2_add floors it; NULLs (no purchase) are left out of max and sum as they are zero. The
# key's max by a window (one sort by key, which the GROUP BY and the key order reuse): 22 % less backend CPU
# than a GROUP BY joined back (175,000 affinity deltas: 0.87 s against 1.12 s, medians of 3). A chunk is the rows
# up to its last one's id (popularity) or ctid (affinity): one comparison with a number per row, linear whatever
# plan the statistics give. With the chunk as an array (``= ANY(ARRAY(subquery))``), or ``id IN (subquery)``, the
# plan depended on them: a table analysed while the runner had emptied it got a scan comparing every row with the
# whole array, quadratic (one fold of a bench took 50 s; bench/README.md).
FOLD_CHUNK_ROWS = 250_000  # delta rows of a table folded in one transaction
FOLD_POPULARITY = """
    WITH d AS (DELETE FROM product_popularity_deltas WHERE id <= coalesce(
                   (SELECT id FROM product_popularity_deltas ORDER BY id OFFSET %(chunk)s - 1 LIMIT 1),
                   9223372036854775807) RETURNING *),
    m AS (SELECT d.*, max(weight) OVER k AS mw, max(trend) OVER k AS mt, max(bought) OVER k AS mb
            FROM d WINDOW k AS (PARTITION BY product_id)),
    written AS (
    INSERT INTO product_popularity AS p (product_id, category, price, weight, trend, bought)
    SELECT product_id,
           (array_agg(category ORDER BY id DESC) FILTER (WHERE category IS NOT NULL))[1],
           (array_agg(price ORDER BY id DESC) FILTER (WHERE price IS NOT NULL))[1],
           min(mw) + ln(sum(power(2::float8, greatest(-1000::float8, weight - mw)))) / ln(2::float8),
           min(mt) + ln(sum(power(2::float8, greatest(-1000::float8, trend - mt)))) / ln(2::float8),
           min(mb) + ln(sum(power(2::float8, greatest(-1000::float8, bought - mb)))) / ln(2::float8)
      FROM m GROUP BY product_id ORDER BY product_id
    ON CONFLICT (product_id) DO UPDATE
       SET category = coalesce(excluded.category, p.category), price = coalesce(excluded.price, p.price),
           weight = spoor_log2_add(p.weight, excluded.weight), trend = spoor_log2_add(p.trend, excluded.trend),
           bought = spoor_log2_add(p.bought, excluded.bought), updated_at = now()
    RETURNING 1)
    SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM written)
"""
FOLD_AFFINITY = """
    WITH d AS (DELETE FROM product_affinity_deltas WHERE ctid <= coalesce(
                   (SELECT ctid FROM product_affinity_deltas ORDER BY ctid OFFSET %(chunk)s - 1 LIMIT 1),
                   '(4294967295,65535)'::tid) RETURNING *),
    m AS (SELECT d.*, max(weight) OVER k AS mw, max(bought) OVER k AS mb
            FROM d WINDOW k AS (PARTITION BY product_id, neighbour_id)),
    written AS (
    INSERT INTO product_affinity AS x (product_id, neighbour_id, weight, bought)
    SELECT product_id, neighbour_id,
           min(mw) + ln(sum(power(2::float8, greatest(-1000::float8, weight - mw)))) / ln(2::float8),
           min(mb) + ln(sum(power(2::float8, greatest(-1000::float8, bought - mb)))) / ln(2::float8)
      FROM m GROUP BY product_id, neighbour_id ORDER BY product_id, neighbour_id
    ON CONFLICT (product_id, neighbour_id) DO UPDATE
       SET weight = spoor_log2_add(x.weight, excluded.weight), bought = spoor_log2_add(x.bought, excluded.bought)
    RETURNING 1)
    SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM written)
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
    popularity, pairs = _product_sums(batch, new_event_ids)
    if interests:
        execute(cursor, "spoor_merge_interests", MERGE_INTERESTS, orjson.dumps(
            [{"u": u, "f": f, "v": v, "w": w, "p": p} for (u, f, v), (w, p, _) in interests.items()]).decode())
    if popularity:
        lines = [f"{text_field(i)}\t{text_field(c)}\t{text_field(p)}\t{w!r}\t{t!r}\t{NULL if b is None else repr(b)}"
                 for i, (c, p, w, t, b) in popularity.items()]
        lines.append("")
        cursor.copy_expert(COPY_POPULARITY, io.BytesIO("\n".join(lines).encode()), size=1 << 20)
    if pairs:
        lines = [f"{text_field(a)}\t{text_field(b)}\t{w!r}\t{NULL if o is None else repr(o)}"
                 for (a, b), (w, o) in pairs.items()]
        lines.append("")
        cursor.copy_expert(COPY_AFFINITY, io.BytesIO("\n".join(lines).encode()), size=1 << 20)


def _product_sums(batch: dict, new_event_ids: set[str]) -> tuple[dict, dict]:
    """The batch's popularity (product -> category, price, weight, trend, bought) and pairs ((product,
    neighbour) -> weight, bought), of the events new to ``events``, summed per key."""
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
    return popularity, pairs


def write_product_merges(cursor, batch: dict, new_event_ids: set[str]) -> None:
    """The product rows of ``batch`` upserted as before migration 0031 (``MERGE_POPULARITY``,
    ``MERGE_AFFINITY``): what the fold must equal (tests, bench/worker_writes.py)."""
    popularity, pairs = _product_sums(batch, new_event_ids)
    if popularity:
        execute(cursor, "spoor_merge_popularity", MERGE_POPULARITY, orjson.dumps(
            [{"i": i, "c": c, "p": p, "w": w, "t": t, "b": b} for i, (c, p, w, t, b) in popularity.items()]).decode())
    if pairs:
        execute(cursor, "spoor_merge_affinity", MERGE_AFFINITY, orjson.dumps(
            [{"a": a, "b": b, "w": w, "o": o} for (a, b), (w, o) in pairs.items()]).decode())


class Folded(NamedTuple):
    """What a fold took in: delta rows read (and deleted) and keys written, per table; and its duration."""

    popularity_deltas: int
    popularity_rows: int
    affinity_deltas: int
    affinity_rows: int
    seconds: float


def fold_product_deltas(engine, chunk: int = FOLD_CHUNK_ROWS) -> Folded:
    """Fold the deltas the workers appended into ``product_popularity`` and ``product_affinity`` (the segments
    runner, each turn, before it makes the lists; tests, after writing). At most ``chunk`` delta rows of a table
    per transaction, oldest popularity rows first (their category and price are the latest a batch gave), until
    a chunk comes back short: a backlog left by a stopped runner is folded in bounded transactions."""
    started = time.monotonic()
    totals = [0, 0, 0, 0]
    pending = [FOLD_POPULARITY, FOLD_AFFINITY]
    while pending:
        with engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            for statement in list(pending):
                cursor.execute(statement, {"chunk": chunk})
                deltas, rows = cursor.fetchone()
                offset = 0 if statement is FOLD_POPULARITY else 2
                totals[offset] += deltas
                totals[offset + 1] += rows
                if deltas < chunk:
                    pending.remove(statement)
            cursor.close()
    return Folded(*totals, time.monotonic() - started)
