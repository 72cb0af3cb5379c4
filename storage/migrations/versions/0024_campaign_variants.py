"""Campaign variants (issue 23): the A/B/n variant of each delivery.

``campaign_deliveries.variant``: the variant the episode's user was assigned when it was enqueued
(``campaign_rules.variant_for``), for treated episodes; NULL for holdout and opted-out episodes, and for
rows enqueued before this migration (the report counts those in the campaign's first variant, the
implicit ``default`` of a campaign without variants).

Revision ID: 0024
"""
import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0018"  # campaign_deliveries as 0018 left it (created by 0006)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaign_deliveries", sa.Column("variant", sa.String(32)))


def downgrade() -> None:
    op.drop_column("campaign_deliveries", "variant")
