"""Interest profiles as a table kept by a trigger, for segments (issue 22; docs/recommendations.md).

0016's view ``user_interest_profile`` ranked every row of ``user_interests`` on every read: 1.3-1.6 s on
420,000 rows (30,000 users), and a segment joined to it paid that in full even when it evaluated three
users, because PostgreSQL cannot push a join key into a grouped view. ``user_interest_profiles`` holds
each user's result instead, one row per user with interests, rewritten for the users a statement on
``user_interests`` touched (statement triggers with transition tables: the worker's batch write, identity
merges, erasure). Segments join it on its primary key, like ``user_activity``.

- ``top_category``, ``preferred_device``, ``preferred_hour``: the value of the facet with the largest
  weight (ties: the smallest value). Weights are forward-decayed logarithms (migration 0016), so the
  order among one user's values only changes with that user's events;
- ``price``: the mean price of the products of the user's interests, weighted by their decayed weights;
- ``price_band`` (in the view ``user_interest_profile``): ``price`` against the catalogue's terciles,
  the view ``product_price_terciles`` over ``product_popularity``'s prices: ``low`` below the first,
  ``mid`` below the second, else ``high``. It moves when the catalogue's prices do.

Revision ID: 0019
"""
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0016"  # user_interests, product_popularity and the view it replaces
branch_labels = None
depends_on = None

REFRESH = """
CREATE FUNCTION spoor_refresh_interest_profiles(keys text[]) RETURNS void LANGUAGE sql AS $$
    DELETE FROM user_interest_profiles p
     WHERE p.user_key = ANY(keys) AND NOT EXISTS (SELECT 1 FROM user_interests i WHERE i.user_key = p.user_key);
    WITH mine AS MATERIALIZED (
        SELECT user_key, facet, value, weight, price FROM user_interests WHERE user_key = ANY(keys)
    ), tops AS (
        SELECT DISTINCT ON (user_key, facet) user_key, facet, value
          FROM mine WHERE facet IN ('category', 'device', 'hour')
         ORDER BY user_key, facet, weight DESC, value
    ), prices AS (
        SELECT user_key, sum(price * share) / sum(share) AS price
          FROM (SELECT user_key, price::float8 AS price,
                       power(2::float8, greatest(-1000::float8, weight - max(weight) OVER (PARTITION BY user_key)))
                         AS share
                  FROM mine WHERE facet = 'product' AND price IS NOT NULL) s
         GROUP BY user_key
    )
    INSERT INTO user_interest_profiles AS p (user_key, top_category, preferred_device, preferred_hour, price)
    SELECT u.user_key,
           max(t.value) FILTER (WHERE t.facet = 'category'),
           max(t.value) FILTER (WHERE t.facet = 'device'),
           max(t.value::smallint) FILTER (WHERE t.facet = 'hour'),
           max(r.price)
      FROM (SELECT DISTINCT user_key FROM mine) u
      LEFT JOIN tops t ON t.user_key = u.user_key
      LEFT JOIN prices r ON r.user_key = u.user_key
     GROUP BY u.user_key
     ORDER BY u.user_key
    ON CONFLICT (user_key) DO UPDATE
       SET top_category = excluded.top_category, preferred_device = excluded.preferred_device,
           preferred_hour = excluded.preferred_hour, price = excluded.price, updated_at = now()
     WHERE (p.top_category, p.preferred_device, p.preferred_hour, p.price)
           IS DISTINCT FROM (excluded.top_category, excluded.preferred_device, excluded.preferred_hour, excluded.price)
$$
"""
ON_CHANGE = """
CREATE FUNCTION spoor_interests_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM spoor_refresh_interest_profiles(ARRAY(SELECT DISTINCT user_key::text FROM new_rows));
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM spoor_refresh_interest_profiles(ARRAY(SELECT user_key::text FROM new_rows
                                                       UNION SELECT user_key::text FROM old_rows));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM spoor_refresh_interest_profiles(ARRAY(SELECT DISTINCT user_key::text FROM old_rows));
    ELSE  -- TRUNCATE
        DELETE FROM user_interest_profiles;
    END IF;
    RETURN NULL;
END
$$
"""
TRIGGERS = [
    "CREATE TRIGGER user_interests_inserted AFTER INSERT ON user_interests REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION spoor_interests_changed()",
    "CREATE TRIGGER user_interests_updated AFTER UPDATE ON user_interests "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION spoor_interests_changed()",
    "CREATE TRIGGER user_interests_deleted AFTER DELETE ON user_interests REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION spoor_interests_changed()",
    "CREATE TRIGGER user_interests_truncated AFTER TRUNCATE ON user_interests "
    "FOR EACH STATEMENT EXECUTE FUNCTION spoor_interests_changed()",
]
PRICE_BAND = """
CREATE FUNCTION spoor_price_band(price float8, low_below float8, high_from float8) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN price IS NULL OR low_below IS NULL THEN NULL
                WHEN price < low_below THEN 'low' WHEN price < high_from THEN 'mid' ELSE 'high' END
$$
"""
TERCILES = """
CREATE VIEW product_price_terciles AS
SELECT cut[1] AS low_below, cut[2] AS high_from
  FROM (SELECT percentile_cont(ARRAY[1.0 / 3, 2.0 / 3]) WITHIN GROUP (ORDER BY price::float8) AS cut
          FROM product_popularity WHERE price IS NOT NULL) c
"""
PROFILE_VIEW = """
CREATE VIEW user_interest_profile AS
SELECT p.user_key, p.top_category, spoor_price_band(p.price, t.low_below, t.high_from) AS price_band,
       p.preferred_device, p.preferred_hour, p.price
  FROM user_interest_profiles p CROSS JOIN product_price_terciles t
"""

# 0016's view, put back by downgrade().
VIEW_0016 = """
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
    op.execute("DROP VIEW user_interest_profile")
    op.create_table(
        "user_interest_profiles",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("top_category", sa.String(256)),
        sa.Column("preferred_device", sa.String(256)),
        sa.Column("preferred_hour", sa.SmallInteger),
        sa.Column("price", sa.Float(53)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("preferred_hour BETWEEN 0 AND 23", name="user_interest_profiles_hour"),
        postgresql_with={"fillfactor": 70},
    )
    op.execute(REFRESH)
    op.execute(ON_CHANGE)
    for trigger in TRIGGERS:
        op.execute(trigger)
    op.execute("SELECT spoor_refresh_interest_profiles(ARRAY(SELECT DISTINCT user_key::text FROM user_interests))")
    op.execute(PRICE_BAND)
    op.execute(TERCILES)
    op.execute(PROFILE_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW user_interest_profile")
    op.execute("DROP VIEW product_price_terciles")
    op.execute("DROP FUNCTION spoor_price_band(float8, float8, float8)")
    for trigger in ("inserted", "updated", "deleted", "truncated"):
        op.execute(f"DROP TRIGGER user_interests_{trigger} ON user_interests")
    op.execute("DROP FUNCTION spoor_interests_changed()")
    op.execute("DROP FUNCTION spoor_refresh_interest_profiles(text[])")
    op.drop_table("user_interest_profiles")
    op.execute(VIEW_0016)
