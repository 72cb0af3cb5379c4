"""RFM scores per customer: the view ``user_rfm`` over ``user_profiles``, and ``rfm_reference``.

Revision ID: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Customers are identified users (user_id set) with at least one order; guests
# are per-visit keys and would flood the low-frequency quintile. Recency is in
# whole UTC days from the last purchase to the reference date: the row of
# ``rfm_reference`` if there is one, else the day after the latest purchase of
# anyone (so a replayed data set is scored as of its own end, and a live shop as
# of tomorrow). Scores are NTILE(5), 5 = best: most recent, most orders, most
# money; ties go by user_key in byte order so the scores are deterministic.
USER_RFM = """
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
    op.create_table(
        "rfm_reference",
        # At most one row: the date recency is measured to. Without a row, the day after the latest purchase.
        sa.Column("id", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("reference_date", sa.Date, nullable=False),
        sa.CheckConstraint("id", name="rfm_reference_single_row"),
    )
    op.execute(USER_RFM)


def downgrade() -> None:
    op.execute("DROP VIEW user_rfm")
    op.drop_table("rfm_reference")
