"""Retention (issue 24, item 3), part 2: ``sessions`` (with ``session_journeys``), ``campaign_deliveries`` (with
``campaign_attempts``) and ``order_attribution`` become tables partitioned by month of a time that never changes
once the row is written, so the retention job (storage/retention.py) drops whole partitions as for ``events``.

- ``sessions`` and ``session_journeys``: RANGE on ``opened_at``, the session's start when its row was first
  keyed (stream_processors/sessions.py: an inactivity session's id is its start, so the two are one; a client
  session keeps it when a late event moves its start earlier). Keys (user_key, session_id, opened_at): the
  worker's upserts name the same value every time (it is in the session's state). Existing rows take their
  ``started_at`` (a state stored before this has none, and takes its ``started_at`` too).
- ``campaign_deliveries``: RANGE on ``triggered_at`` (the episode's time: a trigger's ``fired_at`` or a segment
  entry's ``at``, fixed with the episode, so a second enqueue of an episode still meets its row). Keys (id,
  triggered_at); the unique (campaign, user_key, episode) and idempotency_key indexes gain ``triggered_at``.
- ``campaign_attempts`` gains its delivery's ``triggered_at`` and is partitioned on it with the same bounds; its
  foreign key becomes (delivery_id, triggered_at) -> campaign_deliveries (id, triggered_at) ON DELETE CASCADE.
- ``order_attribution``: RANGE on ``converted_at`` (the order's event time); key (user_key, conversion_id,
  model, touch, converted_at).

Each gets a DEFAULT partition. In place, in the migration's transaction, as 0027 did: views on the tables are
dropped and made again, the rows copied, sequences handed to the new tables, fillfactor kept on the partitions
of the upserted tables.

Revision ID: 0030
"""
import re
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0030"
# sessions: 0008 (+0012 fillfactor, 0023 utm_medium), journeys 0022, order_attribution 0023, deliveries 0029 (view)
down_revision = ("0012", "0022", "0023", "0029")
branch_labels = None
depends_on = None

AHEAD = 3  # months made ahead (the job keeps as many)
# table, partition column, its own key, fillfactor of the partitions, how the new column is filled (None: has it)
STORES = (
    ("sessions", "opened_at", ("user_key", "session_id"), 70, "started_at"),
    ("session_journeys", "opened_at", ("user_key", "session_id"), 70,
     "coalesce((SELECT s.started_at FROM sessions_before_0030 s WHERE s.user_key = t.user_key "
     "AND s.session_id = t.session_id), t.updated_at)"),
    ("campaign_deliveries", "triggered_at", ("id",), None, None),
    ("campaign_attempts", "triggered_at", ("id",), None,
     "(SELECT d.triggered_at FROM campaign_deliveries_before_0030 d WHERE d.id = t.delivery_id)"),
    ("order_attribution", "converted_at", ("user_key", "conversion_id", "model", "touch"), None, None),
)
ATTEMPTS_FK = "campaign_attempts_delivery_id_fkey"

DEPENDENT_VIEWS = """
    WITH RECURSIVE views(oid, depth) AS (
        SELECT DISTINCT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
         WHERE d.refobjid = ANY(CAST(:tables AS regclass[])) AND r.ev_class <> d.refobjid
        UNION
        SELECT DISTINCT r.ev_class, v.depth + 1 FROM views v JOIN pg_depend d ON d.refobjid = v.oid
          JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> d.refobjid
    )
    SELECT c.relname, c.relkind, pg_get_viewdef(c.oid), max(v.depth)
      FROM views v JOIN pg_class c ON c.oid = v.oid
     GROUP BY c.oid, c.relname, c.relkind ORDER BY max(v.depth), c.relname
"""
INDEXES = ("SELECT i.relname, pg_get_indexdef(i.oid), x.indisprimary, x.indisunique, "
           "(SELECT conname FROM pg_constraint WHERE conindid = i.oid AND contype = 'u') FROM pg_index x "
           "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = CAST(:t AS regclass)")
COLUMNS = ("SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 "
           "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum")


def _month(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def _drop_views(conn) -> tuple[list, list]:
    views = conn.execute(sa.text(DEPENDENT_VIEWS), {"tables": [s[0] for s in STORES]}).all()
    view_indexes = conn.execute(sa.text(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ANY(:v)"),
        {"v": [v[0] for v in views if v[1] == "m"]}).scalars().all()
    for name, kind, _definition, _depth in reversed(views):
        op.execute(f'DROP {"MATERIALIZED VIEW" if kind == "m" else "VIEW"} IF EXISTS "{name}"')
    return views, view_indexes


def _make_views(views: list, view_indexes: list) -> None:
    for name, kind, definition, _depth in views:
        op.execute(f'CREATE {"MATERIALIZED VIEW" if kind == "m" else "VIEW"} "{name}" AS {definition}')
    for definition in view_indexes:
        op.execute(definition)


def _rename_out(conn, table: str) -> tuple[list, list]:
    """Renames the table and its indexes out of the way; its indexes, and its own foreign keys (LIKE copies
    none) but the attempts' one, which the migration makes."""
    indexes = conn.execute(sa.text(INDEXES), {"t": table}).all()
    foreign = conn.execute(sa.text(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 "
        "AND conrelid = CAST(:t AS regclass) AND conname <> :attempts"), {"t": table, "attempts": ATTEMPTS_FK}).all()
    for name, _definition in foreign:
        op.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    op.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_before_0030")
    for index, *_rest in indexes:
        op.execute(f'ALTER INDEX "{index}" RENAME TO "{index}_before_0030"')
    return indexes, foreign


def _add_foreign_keys(table: str, foreign: list) -> None:
    for name, definition in foreign:
        op.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


def _hand_over_sequences(conn, table: str) -> None:
    for column, sequence in conn.execute(sa.text(
            "SELECT a.attname, pg_get_serial_sequence(CAST(:old AS text), a.attname) FROM pg_attribute a "
            "WHERE a.attrelid = CAST(:old AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"),
            {"old": f"{table}_before_0030"}).all():
        if sequence:
            op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {table}.{column}")


def _with_column(definition: str, column: str) -> str:
    """A unique index's definition with the partition column added to its key (before INCLUDE or WHERE)."""
    return re.sub(r"\(([^()]*)\)", lambda m: f"({m[1]}, {column})", definition, count=1)


def upgrade() -> None:
    conn = op.get_bind()
    now = datetime.now(timezone.utc)
    views, view_indexes = _drop_views(conn)
    op.execute(f"ALTER TABLE campaign_attempts DROP CONSTRAINT IF EXISTS {ATTEMPTS_FK}")
    for table, column, key, fillfactor, fill in STORES:
        indexes, foreign = _rename_out(conn, table)
        old = f"{table}_before_0030"
        added = f", {column} timestamptz NOT NULL" if fill is not None else ""
        op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED "
                   f"INCLUDING STORAGE INCLUDING COMMENTS{added}) PARTITION BY RANGE ({column})")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({', '.join(key)}, {column})")
        for _index, definition, primary, unique, _constraint in indexes:
            if primary:
                continue
            # its text names the table, which is now the partitioned one; a unique one takes the partition column
            op.execute(_with_column(definition, column) if unique and column not in definition else definition)
        source = f"(SELECT t.*, {fill} AS {column} FROM {old} t)" if fill is not None else old
        starts = {_month(row[0]) for row in conn.execute(sa.text(
            f"SELECT DISTINCT date_trunc('month', {column}, 'UTC') FROM {source} s"))}
        start = _month(now)
        for _ in range(AHEAD + 1):
            starts.add(start)
            start = _next(start)
        storage = f" WITH (fillfactor = {fillfactor})" if fillfactor else ""
        for start in sorted(starts):
            op.execute(f"CREATE TABLE {table}_p{start:%Y%m} PARTITION OF {table} "
                       f"FOR VALUES FROM ('{start.isoformat()}') TO ('{_next(start).isoformat()}'){storage}")
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT{storage}")
        columns = ", ".join(conn.execute(sa.text(COLUMNS), {"t": table}).scalars())
        op.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {source} s")
        _add_foreign_keys(table, foreign)
    op.execute(f"ALTER TABLE campaign_attempts ADD CONSTRAINT {ATTEMPTS_FK} FOREIGN KEY (delivery_id, triggered_at) "
               f"REFERENCES campaign_deliveries (id, triggered_at) ON DELETE CASCADE")
    for table, *_rest in reversed(STORES):  # attempts before deliveries, journeys before sessions
        _hand_over_sequences(conn, table)
        op.execute(f"DROP TABLE {table}_before_0030")
    _make_views(views, view_indexes)
    for table, *_rest in STORES:
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    conn = op.get_bind()
    views, view_indexes = _drop_views(conn)
    op.execute(f"ALTER TABLE campaign_attempts DROP CONSTRAINT IF EXISTS {ATTEMPTS_FK}")
    for table, column, key, fillfactor, fill in STORES:
        indexes, foreign = _rename_out(conn, table)
        old = f"{table}_before_0030"
        op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED "
                   f"INCLUDING STORAGE INCLUDING COMMENTS)")
        if fill is not None:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        if fillfactor:
            op.execute(f"ALTER TABLE {table} SET (fillfactor = {fillfactor})")
        columns = ", ".join(conn.execute(sa.text(COLUMNS), {"t": table}).scalars())
        # Of the copies of a key stored under two partition times, the latest written is kept.
        op.execute(f"INSERT INTO {table} ({columns}) SELECT DISTINCT ON ({', '.join(key)}) {columns} FROM {old} "
                   f"ORDER BY {', '.join(key)}, {column} DESC")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({', '.join(key)})")
        for _index, definition, primary, unique, constraint in indexes:
            if primary:
                continue
            if unique:
                definition = definition.replace(f", {column})", ")", 1)
            if constraint:  # made by a column's unique=True: a constraint again
                index = re.search(r"\(([^()]*)\)", definition)[1]
                op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} UNIQUE ({index})")
            else:
                op.execute(definition.replace(" ONLY ", " "))
        _add_foreign_keys(table, foreign)
    op.execute(f"ALTER TABLE campaign_attempts ADD CONSTRAINT {ATTEMPTS_FK} FOREIGN KEY (delivery_id) "
               f"REFERENCES campaign_deliveries (id) ON DELETE CASCADE")
    for table, *_rest in reversed(STORES):
        _hand_over_sequences(conn, table)
        op.execute(f"DROP TABLE {table}_before_0030")
    _make_views(views, view_indexes)
