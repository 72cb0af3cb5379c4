"""Metric windows count refunds (`Order Refunded`, event kind `refund`).

Revision ID: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("metric_windows", sa.Column("refunds", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("metric_windows", "refunds")
