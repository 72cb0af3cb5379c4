"""Recommendations at request rates (docs/recommendations.md#serving): lists made ahead by the segments
runner, served by the admin API from memory.

- **Made ahead** (``RecommendationService.make_lists``, migrations 0021 and 0028): each pass of the
  segments runner makes the lists (``STORED_K`` long) of the users changed since its last pass whose
  interests changed since their list was made (``LISTS_BEHIND``: events, merges) or whose consent
  changed, and of the products whose popularity changed, then of users and products
  without a list and of lists older than ``STORED_LIST_MAX_AGE_S``, oldest first. An old list is remade only if
  the product tables changed after it was made (``PRODUCTS_CHANGED_AT``; the user's own changes remake it
  above): a shop with no traffic makes no list again, each made from the same rows as it would be. A
  process's first pass also makes the lists a stopped runner left behind (``LEFT_BEHIND``). The work is bounded and
  paced (``ListPace``): ``LIST_SECONDS_PER_PASS`` for the changed ones (what is left waits for the next
  pass, after that pass's own changes), ``DUE_LISTS_SECONDS_PER_PASS`` for the others, resting as long as it worked, so the
  runner never takes more than half a core from the API and the worker beside it. A list is stored only if
  the user's interests are still those it was made from (an erasure or a new event in between: no row).
- **Served from memory** (``ServedLists``): each admin API process holds every list as JSON already made
  (user key -> bytes, id merged into a user -> the user, product -> bytes, the trending fallback), loaded at
  start and kept current by a thread that reads again the rows PostgreSQL notifies as written or deleted
  (a trigger, channel ``spoor_recommendations``) every ``REFRESH_S``; a lost connection loads everything
  again. A request is a dictionary lookup and a few byte joins: no database, no scoring, no thread.
- **Worked out** (``RecommendationService.for_user`` / ``for_product``), only for ``k`` over ``STORED_K``
  or before the first load: storage/recommendations.py's functions with the product-level reads kept
  ``PRODUCT_TTL_S`` in memory (``ProductCache``).

The scoring is recommendations.py's alone, whichever path: tests hold the answers equal. Whether a user
gets a personal list is decided there too (``NO_PERSONAL_LIST``), when the list is made.
"""

import functools
import gc
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import NamedTuple

import orjson
import psycopg2
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from spoor.storage.api_keys import active_keys
from spoor.storage.identities import MAX_CHAIN
from spoor.storage.interests import fold_product_deltas
from spoor.storage.recommendations import MAX_K, Blend, DatabaseReads, fill_up, for_product, for_user

log = logging.getLogger(__name__)

PRODUCT_TTL_S = 2.0
MAX_ENTRIES = 50_000
RANKED_DEPTH = 2 * MAX_K + 1  # what fill_up may ask for at most: k + the k already listed + one excluded

STORED_K = 20  # the length of a list made ahead; longer ones are worked out on request
MAX_LISTS_PER_PASS = 2_000  # of each kind (users, products) per pass of the segments runner
STORED_LIST_MAX_AGE_S = 600.0  # a list is remade when this old (other shoppers' events move it)
LIST_SECONDS_PER_PASS = 1.0  # work a pass may spend on the lists of what changed; the rest waits a pass
DUE_LISTS_SECONDS_PER_PASS = 0.5  # then on missing and old lists
LIST_BUSY_SHARE = 0.5  # list making rests as long as it works (after every LIST_SLICE_S of work)
LIST_SLICE_S = 0.02
MAX_BACKLOG = 100_000  # changed keys waiting for a pass with time for them; past this, their age remakes them

REFRESH_S = 0.5  # how often an API process applies the changes PostgreSQL notified
FALLBACK_REFRESH_S = 2.0  # and reads the trending products again
CHANNEL = "spoor_recommendations"  # migration 0028's trigger: 'u' + user key, 'p' + product id

USERS_MISSING = text("""
    SELECT u.user_key FROM (SELECT DISTINCT user_key FROM user_interests) u
     WHERE NOT EXISTS (SELECT 1 FROM user_recommendations r WHERE r.user_key = u.user_key)
     LIMIT :n
""")
# Lists made before :before (older than STORED_LIST_MAX_AGE_S, and made before the product tables last changed).
USERS_OLD = text("SELECT user_key FROM user_recommendations WHERE computed_at < :before ORDER BY computed_at LIMIT :n")
PRODUCTS_MISSING = text("""
    SELECT p.product_id FROM product_popularity p
     WHERE NOT EXISTS (SELECT 1 FROM product_recommendations r WHERE r.product_id = p.product_id)
     LIMIT :n
""")
PRODUCTS_OLD = text("SELECT product_id FROM product_recommendations WHERE computed_at < :before"
                    " ORDER BY computed_at LIMIT :n")
# When the product tables last changed: every fold that writes the affinity of a batch's events writes their
# popularity, in the same turn or, if a worker committed between the two statements, the next. (The runner
# folds before it makes lists, in one thread: no fold is open while a list is made.)
PRODUCTS_CHANGED_AT = text("SELECT now(), max(updated_at) FROM product_popularity")
# The lists made before their user's interests or consent last changed: what a stopped runner's backlog held.
LEFT_BEHIND = text("""
    SELECT r.user_key FROM user_recommendations r
      JOIN (SELECT user_key, max(updated_at) AS changed_at FROM user_interests GROUP BY user_key) i USING (user_key)
     WHERE r.interests_changed_at IS DISTINCT FROM i.changed_at
    UNION
    SELECT r.user_key FROM user_recommendations r JOIN user_consent c USING (user_key) WHERE c.updated_at >= r.computed_at
""")
# Of the users the pass was given, those whose list is missing or was made from other interests, or who had
# ids merged into them since: newest change first. (Their profiles change for many reasons, their lists do not.)
LISTS_BEHIND = text("""
    SELECT k.user_key FROM unnest(CAST(:keys AS text[])) AS k(user_key)
     CROSS JOIN LATERAL (SELECT max(updated_at) AS changed_at FROM user_interests i WHERE i.user_key = k.user_key) i
      LEFT JOIN user_recommendations r ON r.user_key = k.user_key
     WHERE i.changed_at IS NOT NULL
       AND (r.user_key IS NULL OR r.interests_changed_at IS DISTINCT FROM i.changed_at
            OR EXISTS (SELECT 1 FROM user_identities u WHERE u.user_key = k.user_key AND u.status = 'merged'
                                                         AND u.linked_at >= r.computed_at))
     ORDER BY i.changed_at DESC
""")
CONSENT_CHANGED = text("SELECT user_key FROM user_consent WHERE updated_at >= :since")
PRODUCTS_CHANGED = text("SELECT product_id FROM product_popularity WHERE updated_at >= :since")
# None: no interests, no list (the fallback serves the user).
CHANGED_AT = text("SELECT max(updated_at) FROM user_interests WHERE user_key = :user_key")
# The ids merged into the user, directly or through a chain (docs/identity.md): they find the user's list.
MERGED_IDS = text("""
    WITH RECURSIVE merged(id, depth, path) AS (
        SELECT CAST(:user_key AS text), 0, ARRAY[CAST(:user_key AS text)]
        UNION ALL
        SELECT u.id::text, m.depth + 1, m.path || u.id::text
          FROM merged m JOIN user_identities u ON u.user_key = m.id AND u.status = 'merged'
         WHERE m.depth < :max_depth AND NOT u.id::text = ANY(m.path))
    SELECT DISTINCT id FROM merged WHERE depth > 0 ORDER BY id
""")
# Stored only while the user's interests are those the list was made from: an erasure or a new event
# committed meanwhile leaves no row (the next pass makes the list again for a new event).
STORE_USER_LIST = text("""
    INSERT INTO user_recommendations (user_key, items, personal, interests_changed_at, ids, computed_at)
    SELECT :user_key, CAST(:items AS jsonb), :personal, :changed_at, CAST(:ids AS varchar[]), now()
     WHERE (SELECT max(updated_at) FROM user_interests WHERE user_key = :user_key) = :changed_at
    ON CONFLICT (user_key) DO UPDATE
       SET items = excluded.items, personal = excluded.personal, interests_changed_at = excluded.interests_changed_at,
           ids = excluded.ids, computed_at = excluded.computed_at
""")
STORE_PRODUCT_LIST = text("""
    INSERT INTO product_recommendations (product_id, items, computed_at) VALUES (:product_id, CAST(:items AS jsonb), now())
    ON CONFLICT (product_id) DO UPDATE SET items = excluded.items, computed_at = excluded.computed_at
""")

# ServedLists' reads, on a psycopg2 connection of its own (it LISTENs).
SERVED_USERS = "SELECT user_key, personal, items::text, ids FROM user_recommendations"
SERVED_PRODUCTS = "SELECT product_id, items::text FROM product_recommendations"
TRENDING = "SELECT product_id FROM product_popularity ORDER BY trend DESC, product_id LIMIT %s"


@functools.lru_cache(maxsize=8)
def reads_engine(engine: Engine, pool_size: int = 10) -> Engine:
    """One pool per engine and process: the segments runner's passes reuse its connections. Autocommit (no
    BEGIN/ROLLBACK round trips), joins planned in the order written (``join_collapse_limit=1``; left to
    itself PostgreSQL planned ``NEIGHBOURS`` with a scan of ``product_popularity`` per seed, 3-4 times
    slower)."""
    return create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=pool_size, max_overflow=pool_size,
                         pool_pre_ping=False, connect_args={"options": "-c join_collapse_limit=1"})


class BoundedCache:
    """key -> (stored at, value), emptied when full (ids sent on purpose cannot grow it); thread-safe."""

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
    """Each product's neighbour rows, the popular products of a category, the trending ones and a product's
    category, read once and kept ``ttl_s``; the neighbours of several seeds missing are read in one query."""

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


class Made(NamedTuple):
    users: int
    products: int


class ListPace:
    """Runs list making in slices: after every ``slice_s`` of work it rests ``(1 - share) / share`` times
    as long, and counts the work (``worked``) for the pass's budgets."""

    def __init__(self, share: float = LIST_BUSY_SHARE, slice_s: float = LIST_SLICE_S):
        self.share, self.slice_s = share, slice_s
        self.worked = self.unrested = 0.0

    def step(self, make, key: str) -> int:
        started = time.monotonic()
        made = make(key)
        took = time.monotonic() - started
        self.worked += took
        self.unrested += took
        if self.unrested >= self.slice_s:
            time.sleep(self.unrested * (1 - self.share) / self.share)
            self.unrested = 0.0
        return made


# Changed keys a pass had no time for, made at the next pass after its own changes (of this process: after a
# restart, the first pass finds its users again with ``LEFT_BEHIND``; products changed have new popularity,
# so their lists are due when old).
BACKLOG: dict[str, list[str]] = {"users": [], "products": []}
LEFT_BEHIND_QUEUED = {"done": False}  # this process's first runner pass (``since`` given) looked for them


class RecommendationService:
    """The lists the admin API serves when ``ServedLists`` cannot (``k`` over ``STORED_K``, before its first
    load), and the segments runner's ``make_lists``."""

    def __init__(self, engine: Engine, *, product_ttl_s: float = PRODUCT_TTL_S, max_entries: int = MAX_ENTRIES,
                 clock=time.monotonic, blend: Blend = Blend()):
        self.engine = reads_engine(engine)
        self.products = ProductCache(product_ttl_s, max_entries, clock)
        self.blend = blend

    def for_user(self, user_key: str, k: int = 10) -> dict:
        with self.engine.connect() as conn:
            return for_user(self.products.reads(conn), user_key, k, self.blend)

    def for_product(self, product_id: str, k: int = 10) -> dict:
        with self.engine.connect() as conn:
            return for_product(self.products.reads(conn), product_id, k)

    def make_lists(self, keys: list[str], since=None) -> Made:
        """Make and store the lists of those of ``keys`` (users, not other ids) whose list is behind their
        interests (``LISTS_BEHIND``) and, with ``since``, of the users whose consent and the products whose
        popularity changed since then; then missing and old ones. The segments runner calls it each pass
        with the users changed since the last."""
        pace = ListPace()
        with self.engine.connect() as conn:
            reads = self.products.reads(conn)
            users, products = conn.execute(LISTS_BEHIND, {"keys": list(keys)}).scalars().all() if keys else [], []
            if since is not None:
                users += conn.execute(CONSENT_CHANGED, {"since": since}).scalars().all()
                products = conn.execute(PRODUCTS_CHANGED, {"since": since}).scalars().all()
                if not LEFT_BEHIND_QUEUED["done"]:
                    users += conn.execute(LEFT_BEHIND).scalars().all()
                    LEFT_BEHIND_QUEUED["done"] = True
            # Old lists made after the product tables last changed were made from the rows as they are.
            now, products_changed = conn.execute(PRODUCTS_CHANGED_AT).one()
            old_before = min(now - timedelta(seconds=STORED_LIST_MAX_AGE_S), products_changed or now)
            made_users = self._make(conn, "users", users, (USERS_MISSING, USERS_OLD), old_before, pace,
                                    lambda key: self._store_user(conn, reads, key))
            made_products = self._make(conn, "products", products, (PRODUCTS_MISSING, PRODUCTS_OLD), old_before,
                                       pace, lambda key: self._store_product(conn, reads, key))
        return Made(made_users, made_products)

    def _make(self, conn: Connection, kind: str, changed: list[str], due_queries, old_before: datetime,
              pace: ListPace, store) -> int:
        # Newest changes first: they are what shoppers on the site now did; the backlog's lists are stale already.
        queue = list(dict.fromkeys(changed + BACKLOG[kind]))
        BACKLOG[kind] = []
        made = 0
        budget_end = pace.worked + LIST_SECONDS_PER_PASS
        for index, key in enumerate(queue):
            if made >= MAX_LISTS_PER_PASS or pace.worked > budget_end:
                BACKLOG[kind] = queue[index:index + MAX_BACKLOG]
                return made
            made += pace.step(store, key)
        missing, old = due_queries
        room = MAX_LISTS_PER_PASS - made
        due = conn.execute(missing, {"n": room}).scalars().all()
        if len(due) < room:
            due += conn.execute(old, {"n": room - len(due), "before": old_before}).scalars().all()
        budget_end = pace.worked + DUE_LISTS_SECONDS_PER_PASS
        listed = set(queue)
        for key in due:
            if made >= MAX_LISTS_PER_PASS or pace.worked > budget_end:
                break
            if key not in listed:
                made += pace.step(store, key)
        return made

    def _store_user(self, conn: Connection, reads, key: str) -> int:
        changed_at = conn.execute(CHANGED_AT, {"user_key": key}).scalar()
        if changed_at is None:
            return 0
        answer = for_user(reads, key, STORED_K, self.blend)
        ids = conn.execute(MERGED_IDS, {"user_key": key, "max_depth": MAX_CHAIN}).scalars().all()
        return conn.execute(STORE_USER_LIST, {
            "user_key": key, "items": orjson.dumps(answer["items"]).decode(), "personal": answer["personal"],
            "changed_at": changed_at, "ids": ids or None}).rowcount

    def _store_product(self, conn: Connection, reads, product_id: str) -> int:
        answer = for_product(reads, product_id, STORED_K)
        conn.execute(STORE_PRODUCT_LIST, {"product_id": product_id, "items": orjson.dumps(answer["items"]).decode()})
        return 1


def make_lists(engine: Engine, keys: list[str], since=None) -> Made:
    """``RecommendationService.make_lists`` with a service of its own: its caches last the call, its pool
    (``reads_engine``) the process."""
    return RecommendationService(engine).make_lists(keys, since)


def make_every_list(engine: Engine) -> Made:
    """Every user's and product's list at once, unpaced: for a database just loaded with no runner beside it
    (bench/recommendations.py), not for a shop's live traffic. The product rows the worker appended are
    folded first, as the runner does each turn."""
    fold_product_deltas(engine)
    service = RecommendationService(engine)
    users = products = 0
    with service.engine.connect() as conn:
        reads = service.products.reads(conn)
        for key in conn.execute(text("SELECT DISTINCT user_key FROM user_interests")).scalars().all():
            users += service._store_user(conn, reads, key)
        for product_id in conn.execute(text("SELECT product_id FROM product_popularity")).scalars().all():
            products += service._store_product(conn, reads, product_id)
    return Made(users, products)


def _items(items_json: str) -> bytes:
    """A stored list as the JSON array the API sends, one item a line: a raw newline cannot occur inside
    JSON strings, so the first k items are the text up to the k-th newline (``_first``). Keys in the order
    of a worked-out answer (jsonb keeps them shortest first)."""
    return b"[" + b",\n".join(orjson.dumps({"product_id": item["product_id"], "score": item["score"],
                                             "reason": item["reason"]}) for item in orjson.loads(items_json)) + b"]"


def _first(items: bytes, k: int) -> bytes:
    """The first ``k`` items of ``_items``' array (of what follows a prefix without newlines)."""
    end = -1
    for _ in range(k):
        end = items.find(b"\n", end + 1)
        if end < 0:
            return items
    return items[:end - 1] + b"]"  # without the comma before the newline


class _Trending:
    def __init__(self, products: list[str]):
        self.products = products

    def ranked(self, _category, n: int) -> list[str]:
        return self.products[:n]


class ServedLists:
    """Every list made ahead, in memory, as JSON ready to send (docs/recommendations.md#serving).

    ``start()`` loads everything (blocking: the API's start-up) and starts a thread that applies what
    PostgreSQL notifies every ``refresh_s``, and refreshes ``api_keys`` ahead of expiry, so that no request
    waits for the database. ``user()`` and ``product()`` answer in microseconds; None when ``k`` is over
    ``STORED_K`` or nothing was loaded yet (the caller works the list out)."""

    def __init__(self, engine: Engine, refresh_s: float = REFRESH_S, api_keys=None):
        self.engine = engine
        self.connect_args = engine.dialect.create_connect_args(engine.url)
        self.refresh_s = refresh_s
        self.api_keys = api_keys
        self.users: dict[str, bytes] = {}  # user key -> b'true,"items":[...]' (personal, then the items)
        self.aliases: dict[str, str] = {}  # id merged into a user -> the user
        self.ids: dict[str, tuple] = {}  # user -> the ids merged into it (to forget them when the row changes)
        self.products: dict[str, bytes] = {}  # product -> b'[...]'
        self.trending: tuple = ()  # (product id, its item) of the trending products, for the fallback
        self.ready = False
        self.applied = 0  # rows read again since the start (notified), for tests and figures
        self.conn = None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.fallback_read_at = float("-inf")

    # -- the request path: dictionary lookups and byte joins ------------------------------------------

    def user(self, user_id: str, k: int) -> bytes | None:
        if k > STORED_K or not self.ready:
            return None
        stored = self.users.get(self.aliases.get(user_id, user_id))
        head = b'{"user_key":' + orjson.dumps(user_id) + b',"personal":'
        if stored is None:  # unknown, new, without interests, erased: the fallback
            return head + b'false,"items":' + self._fallback(k) + b"}"
        return head + _first(stored, k) + b"}"

    def product(self, product_id: str, k: int) -> bytes | None:
        if k > STORED_K or not self.ready:
            return None
        stored = self.products.get(product_id)
        items = _first(stored, k) if stored is not None else self._fallback(k, product_id)
        return b'{"product_id":' + orjson.dumps(product_id) + b',"items":' + items + b"}"

    def _fallback(self, k: int, exclude: str | None = None) -> bytes:
        return b"[" + b",".join([item for product_id, item in self.trending if product_id != exclude][:k]) + b"]"

    # -- keeping it current ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.thread is not None:
            return
        try:
            self._load()
        except psycopg2.Error as err:  # the database away at start: requests are worked out until it is back
            log.warning("recommendation lists not loaded (%s); trying again in the background", err)
            self._close()
        gc.freeze()  # what was loaded lives as long as the process: no collection walks it again
        self.thread = threading.Thread(target=self._run, name="served-lists", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)
        self._close()

    def _run(self) -> None:
        while not self.stopping.wait(self.refresh_s):
            try:
                if self.conn is None:
                    self._load()
                self._apply()
            except Exception:  # noqa: BLE001 - whatever it was, a full load from a new connection follows
                log.exception("recommendation lists not kept current; loading them all again")
                self._close()
            try:
                self._refresh_keys()
            except SQLAlchemyError as err:  # the request path reads them itself when they expire
                log.warning("API keys not read ahead: %s", err)

    def _close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        self.conn = None

    def _connect(self):
        args, kwargs = self.connect_args
        conn = psycopg2.connect(*args, **kwargs)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")  # before the load: a change committed after it is notified
        return conn

    def _load(self) -> None:
        conn = self._connect()
        users: dict[str, bytes] = {}
        aliases: dict[str, str] = {}
        ids: dict[str, tuple] = {}
        products: dict[str, bytes] = {}
        conn.autocommit = False  # a server-side cursor: rows come in chunks, not all at once
        with conn.cursor(name="served_users") as cur:
            cur.itersize = 5000
            cur.execute(SERVED_USERS)
            for user_key, personal, items, merged in cur:
                users[user_key] = (b"true," if personal else b"false,") + b'"items":' + _items(items)
                if merged:
                    ids[user_key] = tuple(merged)
                    aliases.update(dict.fromkeys(merged, user_key))
        with conn.cursor(name="served_products") as cur:
            cur.itersize = 5000
            cur.execute(SERVED_PRODUCTS)
            for product_id, items in cur:
                products[product_id] = _items(items)
        conn.commit()
        conn.autocommit = True
        self.conn = conn
        self._read_fallback()
        self.users, self.aliases, self.ids, self.products = users, aliases, ids, products
        self.ready = True
        log.info("recommendation lists loaded: %d users, %d ids merged into them, %d products",
                 len(users), len(aliases), len(products))

    def _apply(self) -> None:
        self.conn.poll()
        notified = self.conn.notifies[:]
        del self.conn.notifies[:len(notified)]
        keys = {"u": set(), "p": set()}
        for note in notified:
            if note.payload[:1] in keys:
                keys[note.payload[:1]].add(note.payload[1:])
        users, products = sorted(keys["u"]), sorted(keys["p"])
        with self.conn.cursor() as cur:
            for start in range(0, len(users), 1000):
                chunk = users[start:start + 1000]
                cur.execute(SERVED_USERS + " WHERE user_key = ANY(%s)", (chunk,))
                found = {row[0]: row[1:] for row in cur}
                for user_key in chunk:
                    self._set_user(user_key, found.get(user_key))
            for start in range(0, len(products), 1000):
                chunk = products[start:start + 1000]
                cur.execute(SERVED_PRODUCTS + " WHERE product_id = ANY(%s)", (chunk,))
                found = dict(cur.fetchall())
                for product_id in chunk:
                    if product_id in found:
                        self.products[product_id] = _items(found[product_id])
                    else:
                        self.products.pop(product_id, None)
        self.applied += len(users) + len(products)
        if time.monotonic() - self.fallback_read_at >= FALLBACK_REFRESH_S:
            self._read_fallback()

    def _set_user(self, user_key: str, row: tuple | None) -> None:
        """The user's list as stored now (``row``: personal, items, merged ids), or none (deleted)."""
        for merged in self.ids.pop(user_key, ()):
            if self.aliases.get(merged) == user_key:
                del self.aliases[merged]
        if row is None:
            self.users.pop(user_key, None)
            return
        personal, items, merged = row
        self.users[user_key] = (b"true," if personal else b"false,") + b'"items":' + _items(items)
        if merged:
            self.ids[user_key] = tuple(merged)
            self.aliases.update(dict.fromkeys(merged, user_key))

    def _read_fallback(self) -> None:
        """The trending products with fill_up's items for them (the scores are their places)."""
        with self.conn.cursor() as cur:
            cur.execute(TRENDING, (STORED_K + 1,))
            products = [row[0] for row in cur]
        items = fill_up(_Trending(products), [], STORED_K + 1, None)
        self.trending = tuple((item["product_id"], orjson.dumps(item)) for item in items)
        self.fallback_read_at = time.monotonic()

    def _refresh_keys(self) -> None:
        """Read the API keys before they expire, so that no request waits for that read."""
        keys = self.api_keys
        if keys is not None and keys.expires - keys.clock() < keys.refresh_s / 2:
            keys.keys = active_keys(self.engine)
            keys.expires = keys.clock() + keys.refresh_s
