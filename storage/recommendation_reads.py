"""Recommendation reads for serving: storage/recommendations.py's functions, with the reads about products
kept for a moment, so that a request costs the database only the reads about its user.

``ServingCache.reads(conn)`` wraps a connection for ``recommendations.for_user`` / ``for_product``: their
reads of a product's neighbours (``NEIGHBOURS``, one list per seed product), of its category and of the
popular and trending lists are answered from memory when younger than ``ttl_s`` (``TTL_S``), else read
(the missing seeds of a request in one query) and kept. Everything else, the user's ids, consent and
interests, goes to the database every time. So the scoring is recommendations.py's alone, on the same
rows; a user's list follows the user's events at once and other shoppers' events within ``ttl_s``.

A statement the wrapper does not know passes through, so a change to recommendations.py's statements
costs speed, never correctness. The cache holds at most ``max_entries`` lists (about 50 rows each), and
is emptied when full: unknown product ids sent on purpose cannot grow it without bound.
"""

import collections
import functools
import threading
import time
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, create_engine

from spoor.storage import recommendations as rec

TTL_S = 2.0
MAX_ENTRIES = 50_000
RANKED_DEPTH = 2 * rec.MAX_K + 1  # what _fill may ask for at most: k + the k already listed + one excluded


def reads_engine(engine: Engine, pool_size: int = 10) -> Engine:
    """A pool of connections to ``engine``'s database for recommendation reads: autocommit (every read is a
    SELECT: no BEGIN and ROLLBACK round trips), and joins planned in the order the statements write them
    (``join_collapse_limit=1``): left to itself, PostgreSQL plans ``NEIGHBOURS`` with a scan of the whole
    of ``product_popularity`` for every seed product, 3-4 times slower."""
    return create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=pool_size, max_overflow=pool_size,
                         pool_pre_ping=False, connect_args={"options": "-c join_collapse_limit=1"})


class Rows(list):
    """A result read from memory: iterable rows, ``all()``, ``scalar()``, ``scalars().all()``."""

    def all(self) -> list:
        return list(self)

    def scalar(self):
        return self[0][0] if self else None

    def scalars(self) -> "Rows":
        return Rows(row[0] for row in self)


class ServingCache:
    """Product-level reads of recommendations.py kept for ``ttl_s``; safe to share between threads."""

    def __init__(self, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES, clock=time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[tuple, tuple[float, list]] = {}  # key -> (read at, rows)
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def reads(self, conn: Connection) -> "CachedReads":
        return CachedReads(conn, self)

    def _get(self, key: tuple, now: float) -> list | None:
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl_s:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def _put(self, items: Iterable[tuple[tuple, list]], now: float) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            for key, rows in items:
                self._entries[key] = (now, rows)

    def neighbours(self, conn: Connection, seeds: list[str], per_seed: int) -> Rows:
        now = self.clock()
        found = {seed: self._get(("neighbours", seed, per_seed), now) for seed in dict.fromkeys(seeds)}
        missing = [seed for seed, rows in found.items() if rows is None]
        if missing:
            read: dict[str, list] = {seed: [] for seed in missing}
            for row in _fetch(conn, rec.NEIGHBOURS, {"seeds": missing, "per_seed": per_seed}):
                read[row.seed].append(row)
            self._put(((("neighbours", seed, per_seed), rows) for seed, rows in read.items()), now)
            found.update(read)
        return Rows(row for seed in found for row in found[seed])

    def read(self, conn: Connection, statement, params: dict, key: tuple) -> Rows:
        now = self.clock()
        rows = self._get(key, now)
        if rows is None:
            rows = conn.execute(statement, params).all()
            self._put([(key, rows)], now)
        return Rows(rows)


_compiled: dict[int, tuple] = {}  # id(statement) -> (the statement, its SQL for the driver)


def _fetch(conn: Connection, statement, params: dict) -> list:
    """``conn.execute(statement, params).all()`` as named tuples, straight from the driver's cursor: the
    hundreds of neighbour rows of a request cost several times less than as SQLAlchemy rows."""
    statement_and_sql = _compiled.get(id(statement))
    if statement_and_sql is None or statement_and_sql[0] is not statement:
        statement_and_sql = _compiled[id(statement)] = (statement, str(statement.compile(dialect=conn.dialect)))
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(statement_and_sql[1], params)
        row_type = _row_type(tuple(column.name for column in cursor.description))
        return [row_type._make(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


@functools.cache
def _row_type(names: tuple[str, ...]):
    return collections.namedtuple("Row", names)


class CachedReads:
    """The connection recommendations.py is given: product-level statements from the cache, the rest
    passed to ``conn``."""

    def __init__(self, conn: Connection, cache: ServingCache):
        self.conn = conn
        self.cache = cache

    def execute(self, statement, params: dict | None = None):
        params = params or {}
        if statement is rec.NEIGHBOURS:
            return self.cache.neighbours(self.conn, list(params["seeds"]), params["per_seed"])
        if statement is rec.TRENDING and params["k"] <= RANKED_DEPTH:
            return self._ranked(statement, {}, ("trending",), params["k"])
        if statement is rec.POPULAR_IN and params["k"] <= RANKED_DEPTH:
            category = params["category"]
            return self._ranked(statement, {"category": category}, ("popular", category), params["k"])
        if statement is rec.PRODUCT_CATEGORY:
            return self.cache.read(self.conn, statement, params, ("category", params["product_id"]))
        return self.conn.execute(statement, params)

    def _ranked(self, statement, params: dict, key: tuple, k: int) -> Rows:
        return Rows(self.cache.read(self.conn, statement, {**params, "k": RANKED_DEPTH}, key)[:k])
