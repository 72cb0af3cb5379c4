"""Recommendations at request rates: storage/recommendations.py's answers, with what does not change at
every event kept in memory for a moment. The admin API serves its two recommendation routes with it.

- **Per product** (``ProductCache``): each product's neighbour rows, the popular products of a category,
  the trending ones and a product's category are read once and kept ``ttl_s`` (``PRODUCT_TTL_S``), so a
  request costs the database only what is about its user; the neighbours of several seeds missing from
  memory are read in one query.
- **Made ahead** (migration 0021): the segments runner makes the lists (``STORED_K`` long) of the users
  changed since its last pass, then, for ``DUE_LISTS_SECONDS_PER_PASS`` at most, of users without one and
  of lists older than ``STORED_LIST_MAX_AGE_S``, oldest first (``make_lists``). A request is answered from
  the stored list, in one query (``USER_STATE``), while it was made from the user's interests as they are
  now: the user's own events, merges, opt-outs and erasure show at once; other shoppers' events (the
  neighbours, what sells) when the list is remade. Age alone never sends a request down the slow path,
  so a runner that falls behind makes lists staler, not requests slower.
- **Else per user** (``RecommendationService.for_user``): the list is worked out, and kept ``list_ttl_s``
  (``LIST_TTL_S``) and given again only while the user is the same: one query (``USER_STATE``) reads the
  user the id belongs to, their consent and when their interests last changed, so the user's own events,
  a merge of ids, an opt-out or an erasure change the answer at once; other shoppers' events (the
  neighbours, what sells) reach a kept answer within ``list_ttl_s``.

The scoring is recommendations.py's alone (``rank_for_user``), on the same rows: tests hold the answers
equal. Memory is bounded: each cache is emptied when it reaches ``max_entries``, so ids sent on purpose
cannot grow it. Reads go through a pool of their own: autocommit (no BEGIN/ROLLBACK round trips) and joins
planned in the order written (``join_collapse_limit=1``; left to itself PostgreSQL planned ``NEIGHBOURS``
with a scan of ``product_popularity`` per seed, 3-4 times slower).
"""

import functools
import threading
import time

import orjson

from sqlalchemy import Connection, Engine, create_engine, text

from spoor.storage.identities import CHAIN_FROM_ID, MAX_CHAIN
from spoor.storage.recommendations import MAX_K, Blend, DatabaseReads, fill_up, for_product, for_user, rank_for_user

PRODUCT_TTL_S = 2.0
LIST_TTL_S = 30.0
MAX_ENTRIES = 50_000
RANKED_DEPTH = 2 * MAX_K + 1  # what fill_up may ask for at most: k + the k already listed + one excluded

STORED_K = 20  # the length of a list made ahead (migration 0021); longer ones are worked out on request
MAX_LISTS_PER_PASS = 2_000  # lists the segments runner makes per pass; the others are made on request
STORED_LIST_MAX_AGE_S = 600.0  # a list made ahead is remade when this old, as a pass has time for it
DUE_LISTS_SECONDS_PER_PASS = 0.5  # time a pass may spend remaking missing or old lists (changed users first)
# Users whose list is missing or older than the above, for a pass with capacity left (the user_interests
# primary key gives its users in order without reading them all).
LISTS_MISSING = text("""
    SELECT u.user_key FROM (SELECT DISTINCT user_key FROM user_interests) u
     WHERE NOT EXISTS (SELECT 1 FROM user_recommendations r WHERE r.user_key = u.user_key)
     LIMIT :n
""")
LISTS_OLD = text("""
    SELECT user_key FROM user_recommendations WHERE computed_at < now() - make_interval(secs => :max_age_s)
     ORDER BY computed_at LIMIT :n
""")
USER_STATE = text(CHAIN_FROM_ID + """
    SELECT key, coalesce((SELECT opted_out FROM user_consent WHERE user_key = key), false) AS opted_out,
           (SELECT max(updated_at) FROM user_interests WHERE user_key = key) AS changed_at,
           r.items, r.personal, r.interests_changed_at
      FROM (SELECT key FROM chain ORDER BY depth DESC LIMIT 1) resolved
      LEFT JOIN user_recommendations r ON r.user_key = resolved.key
""")
STORE_LIST = text("""
    INSERT INTO user_recommendations (user_key, items, personal, interests_changed_at, computed_at)
    VALUES (:user_key, CAST(:items AS jsonb), :personal, :changed_at, now())
    ON CONFLICT (user_key) DO UPDATE
       SET items = excluded.items, personal = excluded.personal, interests_changed_at = excluded.interests_changed_at,
           computed_at = excluded.computed_at
""")
# None: no list to make. No interests, or opted out: a list made then is not personal, and would still be
# served after an opt-in, since consent is not part of what makes a stored list current.
CHANGED_AT = text("""
    SELECT max(updated_at) FROM user_interests WHERE user_key = :user_key
       AND NOT EXISTS (SELECT 1 FROM user_consent WHERE user_key = :user_key AND opted_out)
""")


@functools.lru_cache(maxsize=8)
def reads_engine(engine: Engine, pool_size: int = 10) -> Engine:
    """One pool per engine and process: the segments runner's passes reuse its connections."""
    return create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=pool_size, max_overflow=pool_size,
                         pool_pre_ping=False, connect_args={"options": "-c join_collapse_limit=1"})


class BoundedCache:
    """key -> (stored at, value), emptied when full; safe to share between threads."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.entries: dict = {}
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key, newer_than: float):
        entry = self.entries.get(key)
        if entry is not None and entry[0] > newer_than:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key, value, at: float) -> None:
        with self.lock:
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[key] = (at, value)


class ProductCache(BoundedCache):
    def __init__(self, ttl_s: float = PRODUCT_TTL_S, max_entries: int = MAX_ENTRIES, clock=time.monotonic):
        super().__init__(max_entries)
        self.ttl_s = ttl_s
        self.clock = clock

    def reads(self, conn: Connection) -> "CachedReads":
        return CachedReads(conn, self)


class CachedReads(DatabaseReads):
    """``DatabaseReads`` with the product-level reads answered from a ``ProductCache``."""

    def __init__(self, conn: Connection, cache: ProductCache):
        super().__init__(conn)
        self.cache = cache

    def neighbours(self, seeds: list[str], per_seed: int) -> list:
        now = self.cache.clock()
        fresh_after = now - self.cache.ttl_s
        found = {seed: self.cache.get(("neighbours", seed, per_seed), fresh_after) for seed in dict.fromkeys(seeds)}
        missing = [seed for seed, rows in found.items() if rows is None]
        if missing:
            read: dict[str, list] = {seed: [] for seed in missing}
            for row in super().neighbours(missing, per_seed):
                read[row[0]].append(row)
            for seed, rows in read.items():
                self.cache.put(("neighbours", seed, per_seed), rows, now)
            found.update(read)
        return [row for rows in found.values() for row in rows]

    def ranked(self, category: str | None, n: int) -> list[str]:
        if n > RANKED_DEPTH:
            return super().ranked(category, n)
        now = self.cache.clock()
        ranked = self.cache.get(("ranked", category), now - self.cache.ttl_s)
        if ranked is None:
            ranked = super().ranked(category, RANKED_DEPTH)
            self.cache.put(("ranked", category), ranked, now)
        return ranked[:n]

    def category_of(self, product_id: str) -> str | None:
        now = self.cache.clock()
        entry = self.cache.get(("category", product_id), now - self.cache.ttl_s)
        if entry is None:
            entry = (super().category_of(product_id),)
            self.cache.put(("category", product_id), entry, now)
        return entry[0]


class RecommendationService:
    """What the admin API's recommendation routes answer (docs/recommendations.md#serving)."""

    def __init__(self, engine: Engine, *, product_ttl_s: float = PRODUCT_TTL_S, list_ttl_s: float = LIST_TTL_S,
                 max_entries: int = MAX_ENTRIES, clock=time.monotonic, blend: Blend = Blend()):
        self.engine = reads_engine(engine)
        self.products = ProductCache(product_ttl_s, max_entries, clock)
        self.lists = BoundedCache(max_entries)
        self.list_ttl_s = list_ttl_s
        self.clock = clock
        self.blend = blend

    def for_user(self, user_key: str, k: int = 10) -> dict:
        k = max(1, min(k, MAX_K))
        now = self.clock()
        with self.engine.connect() as conn:
            key, opted_out, changed_at, items, personal, made_from = conn.execute(
                USER_STATE, {"id": user_key, "max_depth": MAX_CHAIN}).one()
            if items is not None and not opted_out and made_from == changed_at and k <= STORED_K:
                return {"user_key": user_key, "personal": personal, "items": items[:k]}  # made ahead
            state = (key, opted_out, changed_at)
            kept = self.lists.get((user_key, k), now - self.list_ttl_s)
            if kept is not None and kept[0] == state:
                return kept[1]
            reads = self.products.reads(conn)
            items, category = rank_for_user([] if opted_out else reads.interests(key), reads.neighbours, self.blend, k)
            answer = {"user_key": user_key, "personal": bool(items), "items": fill_up(reads, items, k, category)}
        self.lists.put((user_key, k), (state, answer), now)
        return answer

    def make_lists(self, keys: list[str]) -> int:
        """Make and store the lists of ``keys`` (users, not other ids), then of users whose list is missing
        or old for ``DUE_LISTS_SECONDS_PER_PASS`` at most, ``MAX_LISTS_PER_PASS`` in all; returns how many.
        The segments runner calls it each pass with the users changed since the last."""
        made = 0
        with self.engine.connect() as conn:
            reads = self.products.reads(conn)
            changed = list(dict.fromkeys(keys[:MAX_LISTS_PER_PASS]))
            due = []
            if len(changed) < MAX_LISTS_PER_PASS:
                due = conn.execute(LISTS_MISSING, {"n": MAX_LISTS_PER_PASS - len(changed)}).scalars().all()
            if len(changed) + len(due) < MAX_LISTS_PER_PASS:
                due += conn.execute(LISTS_OLD, {"n": MAX_LISTS_PER_PASS - len(changed) - len(due),
                                                "max_age_s": STORED_LIST_MAX_AGE_S}).scalars().all()
            deadline, listed = None, set(changed)
            for index, key in enumerate(changed + [key for key in due if key not in listed]):
                if index >= len(changed):  # a due list: within the pass's time for them
                    deadline = deadline or time.monotonic() + DUE_LISTS_SECONDS_PER_PASS
                    if time.monotonic() > deadline:
                        break
                changed_at = conn.execute(CHANGED_AT, {"user_key": key}).scalar()
                if changed_at is None:
                    continue
                answer = for_user(reads, key, STORED_K, self.blend)
                conn.execute(STORE_LIST, {"user_key": key, "items": orjson.dumps(answer["items"]).decode(),
                                          "personal": answer["personal"], "changed_at": changed_at})
                made += 1
        return made

    def for_product(self, product_id: str, k: int = 10) -> dict:
        with self.engine.connect() as conn:
            return for_product(self.products.reads(conn), product_id, k)


def make_lists(engine: Engine, keys: list[str]) -> int:
    """``RecommendationService.make_lists`` with a service of its own: its caches last the call, its pool
    (``reads_engine``) the process."""
    return RecommendationService(engine).make_lists(keys)
