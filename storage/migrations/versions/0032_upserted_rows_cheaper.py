"""Make each row the worker upserts cheaper: keep its updates HOT, and drop an index nobody reads.

- fillfactor 50 (was 70, migration 0012) on ``user_profiles``, ``user_activity`` and the partitions of
  ``sessions`` and ``session_journeys`` (storage/retention.py makes new ones with it). At 70, 65-81 % of their
  updates were HOT in a 150,000-event flood and 68-79 % in the worker's writes replayed offline; at 50, 99-100 %
  (journeys, whose rows grow, 94-95 %): an update that is not HOT writes a new entry in every index of the table.
  The replayed writes took 0.965-0.972x the backend CPU and 0.967-0.974x the WAL; the tables are 17-30 % larger.
  Applies to pages written from now on.
- ``sessions_started_at`` dropped. Every session row the worker inserts (about one per seven events) and every
  update of one that is not HOT added an entry to it, and no statement reads it: the readers of ``sessions`` find
  rows by ``user_key`` (the attribution pass, privacy export, erasure, identity merges: the primary key's
  prefix), retention drops partitions by ``opened_at``, and the funnel and journey views group by
  ``(started_at AT TIME ZONE 'UTC')::date``, which it cannot serve (their plans scan the partitions even with
  sequential scans disabled). On the shared development stack it had 0 scans against 256,194 of the key.

bench/README.md has the figures (bench/upsert_costs.py, bench/upsert_replay.py). Downgrade: fillfactor 70 again,
the index made again on the partitioned table (each partition gets its own).

Revision ID: 0032
"""
from alembic import op

revision = "0032"
down_revision = ("0030",)  # sessions and journeys partitioned (0030), profiles and activity at fillfactor 70 (0012)
branch_labels = None
depends_on = None

FILLFACTOR, BEFORE = 50, 70
TABLES = ("user_profiles", "user_activity")
PARTITIONED = ("sessions", "session_journeys")


def _set_fillfactor(value: int) -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {value})")
    for table in PARTITIONED:  # a partitioned table has no storage of its own: each partition has its setting
        op.execute(f"""
            DO $$
            DECLARE part regclass;
            BEGIN
                FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = '{table}'::regclass LOOP
                    EXECUTE format('ALTER TABLE %s SET (fillfactor = {value})', part);
                END LOOP;
            END $$""")


def upgrade() -> None:
    _set_fillfactor(FILLFACTOR)
    op.execute("DROP INDEX IF EXISTS sessions_started_at")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS sessions_started_at ON sessions (started_at)")
    _set_fillfactor(BEFORE)
