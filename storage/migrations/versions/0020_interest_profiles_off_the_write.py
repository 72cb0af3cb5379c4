"""Interest profiles refreshed by the segments runner, not by triggers on the worker's write (issue 22).

0019's statement triggers rewrote ``user_interest_profiles`` for every user a batch touched, inside the
worker's transaction: ~75 us per user per batch, as much as the rest of the interest write again when a
batch holds about one event per user (a flood). The segments runner refreshes the profiles of the users
changed since its last pass instead, just before it evaluates segments for them (segments/membership.py:
``refresh_interest_profiles``), so a segment reads profiles as fresh as the users' other fields.

The top category is now the category (in ``product_popularity``, the catalogue as events describe it) whose
products the user has the largest summed interest in: the worker no longer writes ``category`` rows (one
row fewer per product event). Device and hour are unchanged.

Revision ID: 0020
"""
import importlib.util
from pathlib import Path

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

REFRESH = """
CREATE OR REPLACE FUNCTION spoor_refresh_interest_profiles(keys text[]) RETURNS void LANGUAGE sql AS $$
    DELETE FROM user_interest_profiles p
     WHERE p.user_key = ANY(keys) AND NOT EXISTS (SELECT 1 FROM user_interests i WHERE i.user_key = p.user_key);
    WITH mine AS MATERIALIZED (
        SELECT user_key, facet, value, weight, price FROM user_interests WHERE user_key = ANY(keys)
    ), categories AS (
        SELECT m.user_key, 'category' AS facet, c.category AS value, spoor_log2_sum(m.weight) AS weight
          FROM mine m JOIN product_popularity c ON c.product_id = m.value
         WHERE m.facet = 'product' AND c.category IS NOT NULL
         GROUP BY m.user_key, c.category
    ), tops AS (
        SELECT DISTINCT ON (user_key, facet) user_key, facet, value
          FROM (SELECT user_key, facet, value, weight FROM mine WHERE facet IN ('device', 'hour')
                UNION ALL SELECT user_key, facet, value, weight FROM categories) f
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


def upgrade() -> None:
    for trigger in ("inserted", "updated", "deleted", "truncated"):
        op.execute(f"DROP TRIGGER user_interests_{trigger} ON user_interests")
    op.execute("DROP FUNCTION spoor_interests_changed()")
    op.execute(REFRESH)
    op.execute("SELECT spoor_refresh_interest_profiles(ARRAY(SELECT DISTINCT user_key::text FROM user_interests))")


def downgrade() -> None:
    spec = importlib.util.spec_from_file_location("migration_0019", Path(__file__).with_name("0019_user_interest_profiles.py"))
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    op.execute(previous.REFRESH.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute(previous.ON_CHANGE)
    for trigger in previous.TRIGGERS:
        op.execute(trigger)
