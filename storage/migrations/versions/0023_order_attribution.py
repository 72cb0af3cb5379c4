"""Channel attribution of orders (issue 23, docs/attribution.md): sessions.utm_medium, order_attribution
and the view attribution_revenue_daily.

A session's channel is its UTM source and medium, else its referrer's host, else direct: sessions gain
the medium (``context.campaign.medium``) beside the source and campaign. ``order_attribution`` is
rewritten per person by the segments runner (segments/attribution.py).

Revision ID: 0023
"""
import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = ("0008", "0006")  # sessions (0008), segment_cursors (0006): the runner's cursor
branch_labels = None
depends_on = None

REVENUE_DAILY_VIEW = """
CREATE VIEW attribution_revenue_daily AS
SELECT (converted_at AT TIME ZONE 'UTC')::date AS day, model, channel, currency,
       count(DISTINCT conversion_id) FILTER (WHERE kind = 'order') AS orders,
       coalesce(sum(amount) FILTER (WHERE kind = 'order'), 0::numeric(18, 4)) AS revenue,
       coalesce(-sum(amount) FILTER (WHERE kind = 'refund'), 0::numeric(18, 4)) AS refunded,
       sum(amount) AS net_revenue
  FROM order_attribution
 GROUP BY 1, model, channel, currency
"""


def upgrade() -> None:
    op.add_column("sessions", sa.Column("utm_medium", sa.Text))
    op.create_table(
        "order_attribution",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("conversion_id", sa.String(256), primary_key=True),
        sa.Column("model", sa.String(16), primary_key=True),
        sa.Column("touch", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("order_id", sa.String(256)),
        sa.Column("converted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(3)),
        sa.Column("session_id", sa.String(256)),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(18, 4), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("order_attribution_model_time", "order_attribution", ["model", "converted_at"])
    op.execute(REVENUE_DAILY_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW attribution_revenue_daily")
    op.drop_table("order_attribution")
    op.drop_column("sessions", "utm_medium")
