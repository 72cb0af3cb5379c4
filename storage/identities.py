"""One shopper, one profile, in PostgreSQL: the ids joined to each user, and their rows moved to the user.

``user_identities`` (migration 0015) holds one row per (id, user): ``linked`` when the user's events named
the id, ``merged`` once the id's rows and state are the user's (an id is merged into one user at most),
``refused`` with the reason. docs/identity.md tells the whole story.

- ``record_links`` upserts rows of it (idempotent: a redelivered batch writes them again);
- ``move_rows`` re-points or removes every row keyed by one id so that the user's key holds them, in the
  caller's transaction (``StreamWriter.write_batch`` runs it beside the merged user's rows);
- ``canonical_key`` and ``ids_of`` let readers and erasure find the one profile from any of its ids.

Every table with a ``user_key`` column is found in the catalogue (``TABLES_WITH_USER_KEY``), as erasure
does, so a table added later is moved too: by its rule in ``RULES`` if it has one, else re-pointed, a row
that would collide on a unique index with one of the user's own giving way to it.
"""

import logging
from collections.abc import Callable, Iterable, Sequence

import orjson
from sqlalchemy import Connection, text

log = logging.getLogger(__name__)

KINDS = ("anonymous", "alias", "user")
LINKED, MERGED, REFUSED = "linked", "merged", "refused"
# A chain a -> b -> c is followed this far at most (move_rows flattens chains: they are short).
MAX_CHAIN = 16
# The advisory lock the segments runner holds while it refreshes a segment (segments/membership.py).
SEGMENT_LOCK = "spoor.segment:"

TABLES_WITH_USER_KEY = text("""
    SELECT c.table_name FROM information_schema.columns c
      JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
     WHERE c.table_schema = current_schema() AND c.column_name = 'user_key' AND t.table_type = 'BASE TABLE'
       AND NOT EXISTS (SELECT FROM pg_class p WHERE p.oid = CAST(quote_ident(c.table_name) AS regclass)
                          AND p.relispartition)  -- a partition's rows are its table's (migration 0027)
     ORDER BY c.table_name
""")
# Each unique index (primary keys too) that includes user_key: its key columns. Partial and expression
# indexes are left out (none has user_key today). A partitioned table's partition key is left out too: a
# partitioned table's unique keys must hold it, but it is not what makes a row the same (sessions' opened_at:
# the user's session of the same id, opened under another key, is the same session; migration 0030).
USER_KEY_UNIQUE_INDEXES = text("""
    SELECT c.relname::text AS table_name, array_agg(a.attname::text ORDER BY k.ord) AS columns
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid
     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
     WHERE n.nspname = current_schema() AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
       AND k.ord <= i.indnkeyatts AND NOT a.attnum = ANY(coalesce(p.partattrs::int2[], '{}'))
     GROUP BY c.relname, i.indexrelid
    HAVING bool_or(a.attname = 'user_key')
""")


def _name(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# -- links -------------------------------------------------------------------------------------------

RECORD_LINKS = text("""
    INSERT INTO user_identities AS u (id, user_key, kind, status, reason, linked_at)
    SELECT r.id, r.user_key, r.kind,
           CASE WHEN taken THEN 'refused' ELSE r.status END,
           CASE WHEN taken THEN 'the id was merged into another user first' ELSE r.reason END,
           coalesce(r.linked_at, now())
      FROM json_populate_recordset(NULL::user_identities, CAST(:links AS json)) AS r
     CROSS JOIN LATERAL (SELECT r.status = 'merged' AND EXISTS (
               SELECT 1 FROM user_identities o
                WHERE o.id = r.id AND o.status = 'merged' AND o.user_key <> r.user_key)) AS t(taken)
     ORDER BY r.id COLLATE "C", r.user_key COLLATE "C"
    ON CONFLICT (id, user_key) DO UPDATE
       SET kind = excluded.kind, status = excluded.status, reason = excluded.reason, linked_at = excluded.linked_at
     WHERE (u.kind, u.status, u.reason) IS DISTINCT FROM (excluded.kind, excluded.status, excluded.reason)
       AND NOT (excluded.status = 'linked' AND u.status <> 'linked')
    RETURNING id, user_key, status
""")


def _rank(status: str) -> int:
    return 0 if status == LINKED else 1


def unique_links(links: Iterable[dict]) -> list[dict]:
    """The links one statement can upsert: one per (id, user_key), the last decided one (merged or
    refused) over a mere ``linked``; a second user's ``merged`` of an id already merged in the batch is
    refused (an id is merged into one user); self-links (id = user_key) are dropped."""
    chosen: dict[tuple[str, str], dict] = {}
    merged_into: dict[str, str] = {}
    for link in links:
        if link["id"] == link["user_key"]:
            continue
        link = {"reason": None, "linked_at": None, **link}
        if link["status"] == MERGED:
            owner = merged_into.setdefault(link["id"], link["user_key"])
            if owner != link["user_key"]:
                link = {**link, "status": REFUSED, "reason": "the id was merged into another user first"}
        key = (link["id"], link["user_key"])
        if key not in chosen or _rank(link["status"]) >= _rank(chosen[key]["status"]):
            chosen[key] = link
    return list(chosen.values())


def record_links(conn: Connection, links: Sequence[dict]) -> int:
    """Upsert rows of ``user_identities`` in the caller's transaction; the rows written.

    ``links``: dicts with ``id``, ``user_key``, ``kind`` (anonymous, alias, user), ``status`` (linked,
    merged, refused), ``reason`` and ``linked_at`` (None: now). Idempotent: a row that says the same
    again is left as it is (its ``linked_at`` too), and ``linked`` never replaces a decided status. A
    ``merged`` of an id merged into another user already is stored ``refused`` (and logged): the first
    merge wins, and the batch is not failed for ever by the unique index."""
    rows = unique_links(links)
    if not rows:
        return 0
    written = conn.execute(RECORD_LINKS, {"links": orjson.dumps(rows).decode()}).all()
    wanted = {(r["id"], r["user_key"]): r["status"] for r in rows}
    for linked_id, user_key, status in written:
        if status != wanted[(linked_id, user_key)]:
            log.warning("link of %r to %r stored %s: the id was merged into another user first",
                        linked_id[:64], user_key[:64], status)
    return len(written)


# -- moving a user's rows ----------------------------------------------------------------------------

def _delete(conn: Connection, table: str, from_key: str, into_key: str, unique: list[list[str]]) -> int:
    """The row is derived state the batch rewrites for ``into_key`` (profiles, activity)."""
    return conn.execute(text(f"DELETE FROM {_name(table)} WHERE user_key = :from_key"),
                        {"from_key": from_key}).rowcount


def _repoint(conn: Connection, table: str, from_key: str, into_key: str, unique: list[list[str]]) -> int:
    """``from_key``'s rows become ``into_key``'s; one that would collide with a row of ``into_key`` on a
    unique index (sessions' (user_key, session_id), deliveries' (campaign, user_key, episode)) goes,
    and ``into_key``'s stays."""
    touched = 0
    for columns in unique:
        same = " AND ".join(f"i.{_name(c)} = f.{_name(c)}" for c in columns if c != "user_key") or "TRUE"
        touched += conn.execute(text(
            f"DELETE FROM {_name(table)} f WHERE f.user_key = :from_key AND EXISTS ("
            f"SELECT 1 FROM {_name(table)} i WHERE i.user_key = :into_key AND {same})"),
            {"from_key": from_key, "into_key": into_key}).rowcount
    return touched + conn.execute(text(f"UPDATE {_name(table)} SET user_key = :into_key WHERE user_key = :from_key"),
                                  {"from_key": from_key, "into_key": into_key}).rowcount


MEMBER_SEGMENTS = text("SELECT segment FROM segment_members WHERE user_key = :from_key "
                       "ORDER BY segment COLLATE \"C\"")
DROP_DOUBLE_MEMBERSHIPS = text("""
    WITH dropped AS (
        DELETE FROM segment_members f WHERE f.user_key = :from_key
           AND EXISTS (SELECT 1 FROM segment_members i WHERE i.segment = f.segment AND i.user_key = :into_key)
        RETURNING f.segment)
    INSERT INTO segment_transitions (segment, user_key, change, at, published_at)
    SELECT segment, :into_key, 'exit', now(), now() FROM dropped
    RETURNING id
""")


def _segment_members(conn: Connection, table: str, from_key: str, into_key: str, unique: list[list[str]]) -> int:
    """A membership of ``from_key`` becomes ``into_key``'s when ``into_key`` is not a member: its entry
    (re-pointed with the transitions) is the user's, and no second entry fires the segment's entry
    campaigns again. Where both were members, ``from_key``'s goes with an ``exit`` of ``into_key`` at
    the merge, recorded as published (never sent: the shopper is still a member), so that entries
    minus exits still count the members (segment sizes). No transition stays keyed ``from_key``.
    The segments runner's lock on each segment is taken first, in its order: a refresh running
    now sees the memberships before or after the move, never half of it."""
    segments = conn.execute(MEMBER_SEGMENTS, {"from_key": from_key}).scalars().all()
    for segment in segments:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:lock))"), {"lock": SEGMENT_LOCK + segment})
    if not segments:
        return 0
    doubles = len(conn.execute(DROP_DOUBLE_MEMBERSHIPS, {"from_key": from_key, "into_key": into_key}).all())
    moved = conn.execute(text("UPDATE segment_members SET user_key = :into_key WHERE user_key = :from_key"),
                         {"from_key": from_key, "into_key": into_key}).rowcount
    return doubles + moved


_PURPOSES = ("analytics", "marketing", "personalisation")
_CONSENT_COLUMNS = ", ".join(_PURPOSES + tuple(f"page_{p}" for p in _PURPOSES) + ("page_stated_at",))
_LATER_PAGE = "(c.page_stated_at IS NULL OR excluded.page_stated_at > c.page_stated_at)"
MERGE_CONSENT = text(f"""
    INSERT INTO user_consent AS c (user_key, opted_out, time_zone, {_CONSENT_COLUMNS}, updated_at)
    SELECT :into_key, opted_out, time_zone, {_CONSENT_COLUMNS}, now() FROM user_consent WHERE user_key = :from_key
    ON CONFLICT (user_key) DO UPDATE
       SET opted_out = c.opted_out OR excluded.opted_out, time_zone = coalesce(c.time_zone, excluded.time_zone),
           {", ".join(f"{p} = CASE WHEN c.{p} IS false OR excluded.{p} IS false THEN false "
                      f"ELSE coalesce(c.{p}, excluded.{p}) END" for p in _PURPOSES)},
           {", ".join(f"page_{p} = CASE WHEN {_LATER_PAGE} THEN excluded.page_{p} ELSE c.page_{p} END"
                      for p in _PURPOSES)},
           page_stated_at = greatest(c.page_stated_at, excluded.page_stated_at),
           updated_at = now()
""")


def _user_consent(conn: Connection, table: str, from_key: str, into_key: str, unique: list[list[str]]) -> int:
    """Consent belongs to the person (docs/privacy.md#consent): opted out, or a purpose withdrawn, if either id
    was; the page statement made last (``page_``); ``into_key``'s time zone if it has one."""
    keys = {"from_key": from_key, "into_key": into_key}
    if not conn.execute(MERGE_CONSENT, keys).rowcount:
        return 0
    return conn.execute(text("DELETE FROM user_consent WHERE user_key = :from_key"), keys).rowcount


MOVE_LINKS = text("""
    WITH moved AS (DELETE FROM user_identities WHERE user_key = :from_key RETURNING *)
    INSERT INTO user_identities AS u (id, user_key, kind, status, reason, linked_at)
    SELECT id, :into_key, kind, status, reason, linked_at FROM moved WHERE id <> :into_key
     ORDER BY id COLLATE "C"
    ON CONFLICT (id, user_key) DO UPDATE
       SET kind = excluded.kind, status = excluded.status, reason = excluded.reason, linked_at = excluded.linked_at
     WHERE excluded.status = 'merged' AND u.status <> 'merged'
""")


def _user_identities(conn: Connection, table: str, from_key: str, into_key: str, unique: list[list[str]]) -> int:
    """The ids joined to ``from_key`` are ``into_key``'s (a chain a -> b -> c becomes a -> c, b -> c).
    Where ``into_key`` has a row of the same id, a ``merged`` wins over ``linked`` or ``refused``
    (the refusal was "merged into another user first": that user is ``into_key`` now); a link of
    ``into_key`` itself to ``from_key`` (a loop) goes."""
    keys = {"from_key": from_key, "into_key": into_key}
    before = conn.execute(text("SELECT count(*) FROM user_identities WHERE user_key = :from_key"), keys).scalar_one()
    if before:
        conn.execute(MOVE_LINKS, keys)
    return before


MOVE_INTERESTS = text("""
    WITH moved AS (DELETE FROM user_interests WHERE user_key = :from_key RETURNING *)
    INSERT INTO user_interests AS i (user_key, facet, value, weight, price)
    SELECT :into_key, facet, value, weight, price FROM moved ORDER BY facet, value
    ON CONFLICT (user_key, facet, value) DO UPDATE
       SET weight = spoor_log2_add(i.weight, excluded.weight), price = coalesce(i.price, excluded.price),
           updated_at = now()
""")


def _user_interests(conn: Connection, table: str, from_key: str, into_key: str, unique: list[list[str]]) -> int:
    """Interests add up: a facet value both had weighs the sum of both (migration 0016)."""
    return conn.execute(MOVE_INTERESTS, {"from_key": from_key, "into_key": into_key}).rowcount


LOCK_PROFILE = text("SELECT 1 FROM user_profiles WHERE user_key = :from_key FOR UPDATE")


def _order_attribution(conn: Connection, table: str, from_key: str, into_key: str, unique: list[list[str]]) -> int:
    """Derived: the segments runner attributes ``into_key``'s orders again (its profile changed). Its write
    holds ``from_key``'s profile FOR KEY SHARE (segments/attribution.py): locked here first, no row of
    ``from_key`` it writes can outlive the merge."""
    conn.execute(LOCK_PROFILE, {"from_key": from_key})
    return _delete(conn, table, from_key, into_key, unique)


Rule = Callable[[Connection, str, str, str, list[list[str]]], int]
# How each table's rows of the merged id move; a table that is not here is re-pointed (``_repoint``).
RULES: dict[str, Rule] = {
    "events": _repoint,
    "sessions": _repoint,  # (user_key, session_id): the user's own session of the same id stays
    "user_profiles": _delete,  # the batch upserts the merged user's profile in the same transaction
    "user_activity": _delete,  # likewise
    "behaviour_triggers": _repoint,  # the trigger_id keeps naming the id: deliveries refer to it
    "segment_members": _segment_members,
    "segment_transitions": _repoint,  # with their deliveries' episodes: no entry campaign fires twice
    "campaign_deliveries": _repoint,  # (campaign, user_key, episode): the user's own delivery stays
    "user_consent": _user_consent,
    "user_identities": _user_identities,
    "user_interests": _user_interests,
    "user_recommendations": _delete,  # made again for the merged user (its interests changed)
    "user_interest_profiles": _delete,  # derived: the segments runner's pass refreshes into_key's (0020)
    "order_attribution": _order_attribution,  # derived: the runner attributes into_key's orders again (0023)
}


def user_key_tables(conn: Connection) -> dict[str, list[list[str]]]:
    """Every base table with a ``user_key`` column, with the columns of its unique indexes on user_key."""
    tables: dict[str, list[list[str]]] = {name: [] for name in conn.execute(TABLES_WITH_USER_KEY).scalars()}
    for table, columns in conn.execute(USER_KEY_UNIQUE_INDEXES):
        if table in tables:
            tables[table].append(list(columns))
    return tables


def move_rows(conn: Connection, from_key: str, into_key: str, *,
              tables: dict[str, list[list[str]]] | None = None) -> dict[str, int]:
    """Make every row keyed ``from_key`` ``into_key``'s, in the caller's transaction; rows touched by
    table (tables with none left out). Afterwards no row of a table with a ``user_key`` column is keyed
    ``from_key``. Idempotent: a second run finds nothing to do. ``tables``: ``user_key_tables(conn)``,
    to read the catalogue once for several moves. ``user_identities`` is not written here beyond the
    ids joined to ``from_key``: the link from_key -> into_key is ``record_links``' (write_batch does both)."""
    if from_key == into_key:
        raise ValueError("an id cannot be merged into itself")
    tables = user_key_tables(conn) if tables is None else tables
    touched = {}
    for table in sorted(tables):
        count = RULES.get(table, _repoint)(conn, table, from_key, into_key, tables[table])
        if count:
            touched[table] = count
    return touched


# -- lookups -----------------------------------------------------------------------------------------

# The merges that lead from the id :id to its user, :max_depth at most; other statements start with it.
CHAIN_FROM_ID = """
    WITH RECURSIVE chain(key, depth, path) AS (
        SELECT CAST(:id AS text), 0, ARRAY[CAST(:id AS text)]
        UNION ALL
        SELECT u.user_key::text, c.depth + 1, c.path || u.user_key::text
          FROM chain c JOIN user_identities u ON u.id = c.key AND u.status = 'merged'
         WHERE c.depth < :max_depth AND NOT u.user_key::text = ANY(c.path))
"""
CHAIN = text(CHAIN_FROM_ID + "SELECT key, depth FROM chain ORDER BY depth DESC LIMIT 1")
IS_A_USER = text("SELECT EXISTS (SELECT 1 FROM user_profiles WHERE user_key = :id) "
                 "OR EXISTS (SELECT 1 FROM user_identities WHERE user_key = :id AND status = 'merged')")


def canonical_key(conn: Connection, any_id: str, max_depth: int = MAX_CHAIN) -> str | None:
    """The user ``any_id`` was merged into, following a chain a -> b -> c for ``max_depth`` links at most
    (a longer one, or a loop, ends there); else ``any_id`` itself if it is a user (it has a profile, or
    ids merged into it); else None."""
    key, depth = conn.execute(CHAIN, {"id": any_id, "max_depth": max_depth}).one()
    if depth:
        return key
    return any_id if conn.execute(IS_A_USER, {"id": any_id}).scalar_one() else None


GRAPH = text("""
    WITH RECURSIVE graph(id, user_key, kind, status, reason, linked_at, depth, path) AS (
        SELECT id::text, user_key::text, kind, status, reason, linked_at, 1, ARRAY[user_key::text, id::text]
          FROM user_identities WHERE user_key = :user_key
        UNION ALL
        SELECT u.id::text, u.user_key::text, u.kind, u.status, u.reason, u.linked_at, g.depth + 1, g.path || u.id::text
          FROM graph g JOIN user_identities u ON u.user_key = g.id
         WHERE g.status = 'merged' AND g.depth < :max_depth AND NOT u.id::text = ANY(g.path))
    SELECT DISTINCT ON (id) id, user_key, kind, status, reason, linked_at FROM graph ORDER BY id, depth
""")


def ids_of(conn: Connection, user_key: str, max_depth: int = MAX_CHAIN) -> list[dict]:
    """The ids joined to ``user_key``, and to the ids merged into it (``max_depth`` links at most), in the
    order they were linked: ``id``, ``kind``, ``status``, ``reason``, ``linked_at``, and ``user_key``, the
    user the row names (``user_key`` itself unless the chain was not flattened)."""
    rows = [dict(r._mapping) for r in conn.execute(GRAPH, {"user_key": user_key, "max_depth": max_depth})]
    return sorted(rows, key=lambda row: (row["linked_at"], row["id"]))


def erasable_ids(conn: Connection, any_id: str) -> tuple[str, list[str]]:
    """(the user, the user and every id to erase with it): the ids merged into the user, and those
    linked to it and merged into no one else. Refused ids are not the user's, and an id merged into
    another user is that user's."""
    user_key = canonical_key(conn, any_id) or any_id
    ids = [user_key]
    for row in ids_of(conn, user_key):
        if row["status"] == MERGED or (row["status"] == LINKED and _merged_nowhere(conn, row["id"])):
            ids.append(row["id"])
    return user_key, list(dict.fromkeys(ids))


def _merged_nowhere(conn: Connection, linked_id: str) -> bool:
    return not conn.execute(text("SELECT EXISTS (SELECT 1 FROM user_identities WHERE id = :id AND status = 'merged')"),
                            {"id": linked_id}).scalar_one()
