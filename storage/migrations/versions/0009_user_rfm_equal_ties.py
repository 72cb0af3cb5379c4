"""One RFM definition: ``user_rfm`` gives equal values equal scores and names the groups.

Replaces the NTILE view of 0003, whose ties went by user_key (two customers with the same orders
could get different F scores), and the scores the segments computed on their own, so marketers see
one set of scores. Merges the RFM (0003) and segments (0006) branches.

Revision ID: 0009
"""
from alembic import op

revision = "0009"
down_revision = ("0003", "0006")
branch_labels = None
depends_on = None

# Customers and recency_days as in 0003: identified users (user_id set) with at least one order;
# recency in whole UTC days to the pinned reference date or the day after the latest purchase.
# A score is 1 + floor(5 * below / customers), where ``below`` counts the customers with a lower
# last_purchase_at (R), orders (F) or revenue (M): 5 = most recent, most orders, most money. Equal
# values always get equal scores, and a tie takes the lowest score of the fifths it spans: on real
# data about half the customers ordered once, and they must be F = 1, not the F = 3 that
# ceil(5 * cume_dist()) gives them. Integer arithmetic, so no rounding at the boundaries.
# Groups: the first rule that matches, over R and F only.
USER_RFM = """
CREATE OR REPLACE VIEW user_rfm AS
WITH reference AS (
    SELECT coalesce(
        (SELECT reference_date FROM rfm_reference),
        (SELECT (max(last_purchase_at AT TIME ZONE 'UTC'))::date + 1 FROM user_profiles)
    ) AS reference_date
), customers AS (
    SELECT p.user_key, p.user_id,
           r.reference_date,
           r.reference_date - (p.last_purchase_at AT TIME ZONE 'UTC')::date AS recency_days,
           p.orders AS frequency,
           p.revenue AS monetary,
           p.first_purchase_at, p.last_purchase_at
      FROM user_profiles p CROSS JOIN reference r
     WHERE p.user_id IS NOT NULL AND p.orders > 0 AND p.last_purchase_at IS NOT NULL
), scored AS (
    SELECT c.*,
           (1 + 5 * (rank() OVER (ORDER BY last_purchase_at) - 1) / count(*) OVER ())::integer AS r_score,
           (1 + 5 * (rank() OVER (ORDER BY frequency) - 1) / count(*) OVER ())::integer AS f_score,
           (1 + 5 * (rank() OVER (ORDER BY monetary) - 1) / count(*) OVER ())::integer AS m_score
      FROM customers c
)
SELECT user_key, user_id, reference_date, recency_days, frequency, monetary,
       first_purchase_at, last_purchase_at, r_score, f_score, m_score,
       100 * r_score + 10 * f_score + m_score AS rfm_score,
       CASE WHEN r_score >= 4 AND f_score >= 4 THEN 'champions'
            WHEN r_score >= 3 AND f_score >= 3 THEN 'loyal'
            WHEN r_score >= 3 THEN 'potential_loyalists'
            WHEN f_score >= 3 THEN 'at_risk'
            WHEN r_score = 2 THEN 'hibernating'
            ELSE 'lost'
       END AS rfm_group
  FROM scored
"""

# The 0003 view, verbatim.
NTILE_USER_RFM = """
CREATE VIEW user_rfm AS
WITH reference AS (
    SELECT coalesce(
        (SELECT reference_date FROM rfm_reference),
        (SELECT (max(last_purchase_at AT TIME ZONE 'UTC'))::date + 1 FROM user_profiles)
    ) AS reference_date
), customers AS (
    SELECT p.user_key, p.user_id,
           r.reference_date,
           r.reference_date - (p.last_purchase_at AT TIME ZONE 'UTC')::date AS recency_days,
           p.orders AS frequency,
           p.revenue AS monetary,
           p.first_purchase_at, p.last_purchase_at
      FROM user_profiles p CROSS JOIN reference r
     WHERE p.user_id IS NOT NULL AND p.orders > 0
), scored AS (
    SELECT c.*,
           ntile(5) OVER (ORDER BY recency_days DESC, user_key COLLATE "C") AS r_score,
           ntile(5) OVER (ORDER BY frequency, user_key COLLATE "C") AS f_score,
           ntile(5) OVER (ORDER BY monetary, user_key COLLATE "C") AS m_score
      FROM customers c
)
SELECT user_key, user_id, reference_date, recency_days, frequency, monetary,
       first_purchase_at, last_purchase_at, r_score, f_score, m_score,
       100 * r_score + 10 * f_score + m_score AS rfm_score
  FROM scored
"""


def upgrade() -> None:
    op.execute(USER_RFM)


def downgrade() -> None:
    op.execute("DROP VIEW user_rfm")
    op.execute(NTILE_USER_RFM)
