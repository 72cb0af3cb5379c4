"""Retention (issue 24, item 3): ``events`` and ``dead_letters`` become tables partitioned by time, so the
retention job (storage/retention.py) drops whole partitions instead of deleting rows one by one.

- ``events``: RANGE on ``event_time``, one partition a month (``events_p202612``); primary key
  (event_id, event_time): a partitioned table's unique keys must hold the partition key. ``event_time`` is
  fixed by the collector and travels in the Kafka record, so a redelivered event has the same key and
  lands in the same partition; the worker's write also refuses an event_id already stored near its time
  (storage/writers.py), which covers a client's retry whose clock-corrected time moved by milliseconds.
- ``dead_letters``: RANGE on ``received_at``, one partition a day (``dead_letters_p20261203``); primary key
  (id, received_at); the write refuses an id already stored in any partition (storage/writers.py).
- Each also gets a DEFAULT partition (``events_default``): a row no partition covers (an event older than
  the oldest partition, or a future one past those made ahead) is written, not refused; the job moves it
  into its partition or deletes it once past retention.

In place, in the migration's transaction: the table is locked, renamed, a partitioned table created with the
same columns in the same order (LIKE), the partitions that the rows need (and this month, or day, onwards)
created, the rows copied, the old table dropped. Views and materialized views on the table (none in Spoor's
own migrations, perhaps in others') are dropped and created again from their definitions, with their
indexes. A foreign key pointing at the table, or a unique index without the partition key, cannot survive
partitioning: the migration stops with a clear error instead.

Revision ID: 0027
"""
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = ("0004", "0011", "0018")  # events: columns 0004 and 0018, index 0011; dead_letters: 0004
branch_labels = None
depends_on = None

# table, partition column, partition unit, its own key, partitions made ahead (the job keeps this many too)
STORES = (("events", "event_time", "month", "event_id", 3), ("dead_letters", "received_at", "day", "id", 7))

DEPENDENT_VIEWS = """
    WITH RECURSIVE views(oid, depth) AS (
        SELECT DISTINCT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
         WHERE d.refobjid = CAST(:table AS regclass) AND r.ev_class <> d.refobjid
        UNION
        SELECT DISTINCT r.ev_class, v.depth + 1 FROM views v JOIN pg_depend d ON d.refobjid = v.oid
          JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> d.refobjid
    )
    SELECT c.relname, c.relkind, pg_get_viewdef(c.oid), max(v.depth)
      FROM views v JOIN pg_class c ON c.oid = v.oid
     GROUP BY c.oid, c.relname, c.relkind ORDER BY max(v.depth), c.relname
"""


def _start(moment: datetime, unit: str) -> datetime:
    moment = moment.astimezone(timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if unit == "day" else day.replace(day=1)


def _next(start: datetime, unit: str) -> datetime:
    if unit == "day":
        return start + timedelta(days=1)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def _name(table: str, start: datetime, unit: str) -> str:
    return f"{table}_p{start:%Y%m%d}" if unit == "day" else f"{table}_p{start:%Y%m}"


def _swap_out(conn, table: str) -> tuple[list, list, list]:
    """Drops the views on ``table`` (returned with their indexes, to create again) and renames the table and its
    indexes (returned too)."""
    foreign = conn.execute(sa.text(
        "SELECT conname, conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
        "AND confrelid = CAST(:t AS regclass)"), {"t": table}).all()
    if foreign:
        raise RuntimeError(f"{table} cannot be partitioned while foreign keys point at it: {foreign}")
    views = conn.execute(sa.text(DEPENDENT_VIEWS), {"table": table}).all()
    view_indexes = conn.execute(sa.text(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ANY(:v)"),
        {"v": [v[0] for v in views if v[1] == "m"]}).scalars().all()
    for name, kind, _definition, _depth in reversed(views):
        op.execute(f'DROP {"MATERIALIZED VIEW" if kind == "m" else "VIEW"} "{name}"')
    indexes = conn.execute(sa.text(
        "SELECT i.relname, pg_get_indexdef(i.oid), x.indisprimary, x.indisunique FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = CAST(:t AS regclass)"), {"t": table}).all()
    op.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_before_0027")
    for index, _definition, _primary, _unique in indexes:
        op.execute(f'ALTER INDEX "{index}" RENAME TO "{index}_before_0027"')
    return views, view_indexes, indexes


def _swap_in(table: str, views: list, view_indexes: list) -> None:
    op.execute(f"DROP TABLE {table}_before_0027")
    for name, kind, definition, _depth in views:
        op.execute(f'CREATE {"MATERIALIZED VIEW" if kind == "m" else "VIEW"} "{name}" AS {definition}')
    for definition in view_indexes:
        op.execute(definition)


def upgrade() -> None:
    conn = op.get_bind()
    now = datetime.now(timezone.utc)
    for table, column, unit, key, ahead in STORES:
        views, view_indexes, indexes = _swap_out(conn, table)
        op.execute(f"CREATE TABLE {table} (LIKE {table}_before_0027 INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                   f"INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE ({column})")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key}, {column})")
        for _index, definition, primary, unique in indexes:
            if unique and not primary:
                raise RuntimeError(f"{table}: a unique index without {column} cannot be partitioned: {definition}")
            if not primary:
                op.execute(definition)  # its text names the table, which is now the partitioned one
        starts = {_start(row[0], unit) for row in conn.execute(sa.text(
            f"SELECT DISTINCT date_trunc('{unit}', {column}, 'UTC') FROM {table}_before_0027"))}
        start = _start(now, unit)
        for _ in range(ahead + 1):
            starts.add(start)
            start = _next(start, unit)
        for start in sorted(starts):
            op.execute(f"CREATE TABLE {_name(table, start, unit)} PARTITION OF {table} "
                       f"FOR VALUES FROM ('{start.isoformat()}') TO ('{_next(start, unit).isoformat()}')")
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_before_0027")
        _swap_in(table, views, view_indexes)
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    conn = op.get_bind()
    for table, column, _unit, key, _ahead in STORES:
        views, view_indexes, indexes = _swap_out(conn, table)
        op.execute(f"CREATE TABLE {table} (LIKE {table}_before_0027 INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                   f"INCLUDING STORAGE INCLUDING COMMENTS)")
        # The first of the copies of an id stored in two partitions (two times for one id) is kept.
        op.execute(f"INSERT INTO {table} SELECT DISTINCT ON ({key}) * FROM {table}_before_0027 "
                   f"ORDER BY {key}, {column}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")
        for _index, definition, primary, _unique in indexes:
            if not primary:
                op.execute(definition.replace(" ONLY ", " "))
        _swap_in(table, views, view_indexes)
