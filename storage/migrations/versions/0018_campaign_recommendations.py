"""Campaign recommendations (issue 22): what each message recommended, and the order lines of purchases.

- ``campaign_deliveries.recommendations_k``: how many products the episode's message carries (the
  campaign's ``recommendations.k`` when the episode was enqueued; NULL: none);
- ``recommended_at``, ``recommendations`` (``[{product_id, score, reason}]``) and
  ``recommended_products`` (their ids): the list computed at the first send attempt of a treated
  episode (retries send the same list), or, for a holdout episode, when its message would have been
  sent (the counterfactual, never sent);
- ``campaign_deliveries_counterfactual_due``: the holdout episodes whose list is still to compute;
- ``events.products``: a purchase's order lines as the event carried them (``[{product_id, category,
  price, quantity}]``). The worker's events merge fills it by name (``json_populate_recordset``); the
  campaign report matches recommended products against it. Purchases stored before this migration have
  only their top-level ``product_id``.

Revision ID: 0018
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0018"
down_revision = "0016"  # the recommendations (0016) whose lists the campaigns record
branch_labels = None
depends_on = "0006"  # campaign_deliveries (0006)

COUNTERFACTUAL_DUE = "status = 'holdout' AND recommendations_k IS NOT NULL AND recommended_at IS NULL"


def upgrade() -> None:
    op.add_column("events", sa.Column("products", JSONB))
    op.add_column("campaign_deliveries", sa.Column("recommendations_k", sa.SmallInteger))
    op.add_column("campaign_deliveries", sa.Column("recommended_at", sa.DateTime(timezone=True)))
    op.add_column("campaign_deliveries", sa.Column("recommendations", JSONB))
    op.add_column("campaign_deliveries", sa.Column("recommended_products", ARRAY(sa.String(256))))
    op.create_index("campaign_deliveries_counterfactual_due", "campaign_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text(COUNTERFACTUAL_DUE))


def downgrade() -> None:
    op.drop_index("campaign_deliveries_counterfactual_due", "campaign_deliveries")
    for column in ("recommended_products", "recommendations", "recommended_at", "recommendations_k"):
        op.drop_column("campaign_deliveries", column)
    op.drop_column("events", "products")
