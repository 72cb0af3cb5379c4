"""Interests and recommendations (issue 22): user interests, product popularity and product affinity.

Weights are forward-decayed logarithms, ``log2(w) + t / H`` (stream_processors/interests.py): a sum of
weights is ``spoor_log2_add`` of their logarithms, and ordering by the stored logarithm is ordering by
the decayed weight now. A NULL weight is zero.

- ``user_interests``: per user, facet (product, bought, category, device, hour) and value;
- ``product_popularity``: per product, ``weight`` (half-life H), ``trend`` (a short half-life) and
  ``bought`` (orders only), with its latest category and price;
- ``product_affinity``: per ordered pair of products seen together (same session or same order);
  ``bought`` is the part from orders;
- ``user_interest_profile``: one row per user with its top category, price band (the user's
  weighted price against the catalogue's terciles), preferred device and hour, for segments.

Revision ID: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0001"  # events (0001): the weights are taken from the events it stores
branch_labels = None
depends_on = None

LOG2_ADD = """
CREATE FUNCTION spoor_log2_add(a float8, b float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
                ELSE greatest(a, b) + ln(1 + power(2::float8, greatest(-1000::float8, -abs(a - b)))) / ln(2::float8)
           END
$$
"""
LOG2_SUM = "CREATE AGGREGATE spoor_log2_sum(float8) (SFUNC = spoor_log2_add, STYPE = float8)"

PROFILE_VIEW = """
CREATE VIEW user_interest_profile AS
WITH ranked AS (
    SELECT user_key, facet, value, weight,
           row_number() OVER (PARTITION BY user_key, facet ORDER BY weight DESC, value) AS place
      FROM user_interests
     WHERE facet IN ('category', 'device', 'hour')
), prices AS (
    SELECT i.user_key,
           sum(i.price * power(2::float8, greatest(-1000::float8, i.weight - m.top))::numeric)
             / nullif(sum(power(2::float8, greatest(-1000::float8, i.weight - m.top))::numeric), 0) AS price
      FROM user_interests i
      JOIN (SELECT user_key, max(weight) AS top FROM user_interests WHERE facet = 'product' GROUP BY user_key) m
        USING (user_key)
     WHERE i.facet = 'product' AND i.price IS NOT NULL
     GROUP BY i.user_key
), terciles AS (
    SELECT percentile_cont(ARRAY[1.0 / 3, 2.0 / 3]) WITHIN GROUP (ORDER BY price) AS cut
      FROM product_popularity WHERE price IS NOT NULL
)
SELECT u.user_key,
       max(r.value) FILTER (WHERE r.facet = 'category' AND r.place = 1) AS top_category,
       CASE WHEN p.price IS NULL OR t.cut IS NULL THEN NULL
            WHEN p.price < t.cut[1] THEN 'low' WHEN p.price < t.cut[2] THEN 'mid' ELSE 'high' END AS price_band,
       max(r.value) FILTER (WHERE r.facet = 'device' AND r.place = 1) AS preferred_device,
       max(r.value::int) FILTER (WHERE r.facet = 'hour' AND r.place = 1) AS preferred_hour
  FROM (SELECT DISTINCT user_key FROM user_interests) u
  LEFT JOIN ranked r ON r.user_key = u.user_key AND r.place = 1
  LEFT JOIN prices p ON p.user_key = u.user_key
 CROSS JOIN terciles t
 GROUP BY u.user_key, p.price, t.cut
"""


def upgrade() -> None:
    op.execute(LOG2_ADD)
    op.execute(LOG2_SUM)
    op.create_table(
        "user_interests",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("facet", sa.String(16), primary_key=True),
        sa.Column("value", sa.String(256), primary_key=True),
        sa.Column("weight", sa.Float(53), nullable=False),
        sa.Column("price", sa.Numeric(18, 4)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("facet IN ('product', 'bought', 'category', 'device', 'hour')",
                           name="user_interests_facet"),
        postgresql_with={"fillfactor": 70},
    )
    op.create_table(
        "product_popularity",
        sa.Column("product_id", sa.String(256), primary_key=True),
        sa.Column("category", sa.Text),
        sa.Column("price", sa.Numeric(18, 4)),
        sa.Column("weight", sa.Float(53), nullable=False),
        sa.Column("trend", sa.Float(53), nullable=False),
        sa.Column("bought", sa.Float(53)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        postgresql_with={"fillfactor": 70},
    )
    op.create_index("product_popularity_weight", "product_popularity", [sa.text("weight DESC")])
    op.create_index("product_popularity_trend", "product_popularity", [sa.text("trend DESC")])
    op.create_index("product_popularity_category", "product_popularity", ["category", sa.text("weight DESC")])
    op.create_table(
        "product_affinity",
        sa.Column("product_id", sa.String(256), primary_key=True),
        sa.Column("neighbour_id", sa.String(256), primary_key=True),
        sa.Column("weight", sa.Float(53), nullable=False),
        sa.Column("bought", sa.Float(53)),
        sa.CheckConstraint("product_id <> neighbour_id", name="product_affinity_not_self"),
        postgresql_with={"fillfactor": 70},
    )
    op.create_index("product_affinity_neighbours", "product_affinity", ["product_id", sa.text("weight DESC")])
    op.execute(PROFILE_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW user_interest_profile")
    for table in ("product_affinity", "product_popularity", "user_interests"):
        op.drop_table(table)
    op.execute("DROP AGGREGATE spoor_log2_sum(float8)")
    op.execute("DROP FUNCTION spoor_log2_add(float8, float8)")
