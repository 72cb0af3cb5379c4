"""One row per session: the journey's columns move into ``sessions``; ``session_journeys`` becomes a view of them.

The worker wrote every session twice a batch, its ``sessions`` row and its ``session_journeys`` row, keyed alike
and versioned alike (``events``). Now one upsert writes both (storage/analytics_writer.py): measured, it costs
what the two did (the rewritten bytes are the cost), and the two tables are 13 % smaller with one primary key
fewer (bench/README.md, "one row per session"). Readers keep the name: ``session_journeys`` selects the
journey's columns of the sessions that have them (a row written before migration 0022 has none), with the same
columns as the table had. Identity merges, erasure, export and retention reach the journey with its session.

Views over ``session_journeys`` (the daily journey views of 0022) are dropped and made again over the view.
Downgrade: the partitioned table again, with a partition for each of ``sessions``' (same bounds, fillfactor
50), its rows copied out, the columns dropped from ``sessions``.

Revision ID: 0033
"""
import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = ("0032",)
branch_labels = None
depends_on = None

JOURNEY_COLUMNS = (  # (name, type), in the table's order, after (user_key, session_id, events)
    ("page_depth", "integer"), ("steps_beyond", "integer"), ("step_times", "double precision[]"),
    ("page_type", "text[]"), ("product_id", "text[]"), ("dwell_s", "double precision[]"),
    ("dwell_source", "text[]"), ("search_term", "text[]"), ("result_count", "bigint[]"),
    ("cart_add_after", "boolean[]"),
)
NAMES = [name for name, _type in JOURNEY_COLUMNS]
# The table's columns in its order (0030 added opened_at last): a reader's SELECT * sees what it saw.
VIEW = (f"CREATE VIEW session_journeys AS SELECT user_key, session_id, events, {', '.join(NAMES)}, updated_at, "
        "opened_at FROM sessions WHERE page_depth IS NOT NULL")

DEPENDENT_VIEWS = """
    WITH RECURSIVE views(oid, depth) AS (
        SELECT DISTINCT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
         WHERE d.refobjid = CAST(:relation AS regclass) AND r.ev_class <> d.refobjid
        UNION
        SELECT DISTINCT r.ev_class, v.depth + 1 FROM views v JOIN pg_depend d ON d.refobjid = v.oid
          JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> d.refobjid
    )
    SELECT c.relname, c.relkind, pg_get_viewdef(c.oid), max(v.depth)
      FROM views v JOIN pg_class c ON c.oid = v.oid
     GROUP BY c.oid, c.relname, c.relkind ORDER BY max(v.depth), c.relname
"""
PARTITIONS = ("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
              "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'sessions'::regclass ORDER BY 1")


def _drop_views(conn) -> list:
    """The views over ``session_journeys``, dropped dependents first; their definitions, to make them again."""
    views = conn.execute(sa.text(DEPENDENT_VIEWS), {"relation": "session_journeys"}).all()
    if any(kind != "v" for _name, kind, _definition, _depth in views):
        raise RuntimeError("a materialized view reads session_journeys: this migration makes only views again")
    for name, _kind, _definition, _depth in reversed(views):
        op.execute(f'DROP VIEW "{name}"')
    return views


def _make_views(views: list) -> None:
    for name, _kind, definition, _depth in views:
        op.execute(f'CREATE VIEW "{name}" AS {definition}')


def upgrade() -> None:
    conn = op.get_bind()
    views = _drop_views(conn)
    op.execute("LOCK TABLE sessions, session_journeys IN ACCESS EXCLUSIVE MODE")
    op.execute("ALTER TABLE sessions " + ", ".join(f"ADD COLUMN {name} {kind}" for name, kind in JOURNEY_COLUMNS))
    op.execute(f"UPDATE sessions s SET {', '.join(f'{name} = j.{name}' for name in NAMES)} FROM session_journeys j "
               "WHERE s.user_key = j.user_key AND s.session_id = j.session_id AND s.opened_at = j.opened_at")
    op.execute("DROP TABLE session_journeys")
    op.execute(VIEW)
    _make_views(views)
    op.execute("ANALYZE sessions")


def downgrade() -> None:
    conn = op.get_bind()
    views = _drop_views(conn)
    op.execute("DROP VIEW session_journeys")
    op.execute(
        "CREATE TABLE session_journeys (user_key varchar(256) NOT NULL, session_id varchar(256) NOT NULL, "
        "events integer NOT NULL, " + ", ".join(f"{name} {kind} NOT NULL" for name, kind in JOURNEY_COLUMNS)
        + ", updated_at timestamptz NOT NULL DEFAULT now(), opened_at timestamptz NOT NULL, "
        "PRIMARY KEY (user_key, session_id, opened_at)) PARTITION BY RANGE (opened_at)")
    for name, bound in conn.execute(sa.text(PARTITIONS)).all():
        op.execute(f'CREATE TABLE "{name.replace("sessions", "session_journeys", 1)}" PARTITION OF session_journeys '
                   f"{bound} WITH (fillfactor = 50)")
    op.execute(f"INSERT INTO session_journeys (user_key, session_id, opened_at, events, {', '.join(NAMES)}, "
               f"updated_at) SELECT user_key, session_id, opened_at, events, {', '.join(NAMES)}, updated_at "
               "FROM sessions WHERE page_depth IS NOT NULL")
    op.execute("ALTER TABLE sessions " + ", ".join(f"DROP COLUMN {name}" for name in NAMES))
    _make_views(views)
    op.execute("ANALYZE session_journeys")
