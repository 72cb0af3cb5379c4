"""Product popularity and affinity appended by the worker, folded by the segments runner (issue 25).

The worker's upserts of ``product_popularity`` and ``product_affinity`` were 42 % of its statements' time in
PostgreSQL, and two workers waited on each other's row locks on popular products. Now the worker appends its
batch's rows (summed per key within the batch, as before) to two append-only tables, in the batch's
transaction: a redelivered batch adds nothing twice, as before. The segments runner, the only writer of the
two tables, folds them in each turn (storage/interests.py, ``fold_product_deltas``): one statement per table
deletes what it sees, sums it per key (forward-decayed logarithms: max + log2(sum(2^(w - max)))) and adds it
with ``spoor_log2_add`` as the worker's upserts did.

- ``product_popularity_deltas``: product, category and price (NULL: the batch did not say), weight, trend,
  bought; ``id`` (a sequence) orders the rows for "the latest category and price", as the order of the
  worker's upserts did.
- ``product_affinity_deltas``: product, neighbour, weight, bought.

Ordinary tables, not UNLOGGED: the events the rows came from are acknowledged once the batch commits, so the
rows must survive a crash as the events do. No user key: aggregates of products, as the tables they feed. No
index: the fold reads and deletes the whole table. Autovacuum early (the fold deletes every row each turn).
Weights must be finite (``FINITE``).

Downgrade folds what is waiting (the SQL of this revision) before dropping the tables.

Revision ID: 0031
"""
import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0016"  # product_popularity, product_affinity, spoor_log2_add
branch_labels = None
depends_on = None

VACUUM = {"autovacuum_vacuum_scale_factor": 0, "autovacuum_vacuum_threshold": 100_000,
          "autovacuum_vacuum_insert_scale_factor": 0, "autovacuum_vacuum_insert_threshold": 100_000}
# A weight is a finite number (NaN sorts above 'Infinity'): one that is not would make every later sum of its
# product's row NaN. The worker cannot make one (stream_processors/interests.py: event times and half-lives
# are bounded); a row that is not is refused with its batch, as the upserts refused a NULL weight.
FINITE = "{0} > '-Infinity'::float8 AND {0} < 'Infinity'::float8"

# What storage/interests.py's fold ran at this revision (for the downgrade).
FOLD = (
    """
    WITH d AS (DELETE FROM product_popularity_deltas RETURNING *),
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
    """,
    """
    WITH d AS (DELETE FROM product_affinity_deltas RETURNING *),
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
    """,
)


def upgrade() -> None:
    op.create_table(
        "product_popularity_deltas",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("product_id", sa.String(256), nullable=False),
        sa.Column("category", sa.Text),
        sa.Column("price", sa.Numeric(18, 4)),
        sa.Column("weight", sa.Float(53), nullable=False),
        sa.Column("trend", sa.Float(53), nullable=False),
        sa.Column("bought", sa.Float(53)),
        sa.CheckConstraint(f"{FINITE.format('weight')} AND {FINITE.format('trend')} "
                           f"AND (bought IS NULL OR {FINITE.format('bought')})",
                           name="product_popularity_deltas_finite"),
        postgresql_with=VACUUM,
    )
    op.create_table(
        "product_affinity_deltas",
        sa.Column("product_id", sa.String(256), nullable=False),
        sa.Column("neighbour_id", sa.String(256), nullable=False),
        sa.Column("weight", sa.Float(53), nullable=False),
        sa.Column("bought", sa.Float(53)),
        sa.CheckConstraint("product_id <> neighbour_id", name="product_affinity_deltas_not_self"),
        sa.CheckConstraint(f"{FINITE.format('weight')} AND (bought IS NULL OR {FINITE.format('bought')})",
                           name="product_affinity_deltas_finite"),
        postgresql_with=VACUUM,
    )


def downgrade() -> None:
    for statement in FOLD:
        op.execute(statement)
    op.drop_table("product_affinity_deltas")
    op.drop_table("product_popularity_deltas")
