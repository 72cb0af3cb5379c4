"""Tables shared by the stream analytics (writer) and segments/campaigns (reader).

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(18, 4)
TS = sa.DateTime(timezone=True)
WINDOWS = ("1d", "7d", "30d")
WINDOWED_COUNTS = ("page_views", "product_views", "cart_adds", "checkouts", "purchases")


def upgrade() -> None:
    op.create_table(
        "user_activity",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("as_of", TS, nullable=False),
        *[sa.Column(f"{count}_{window}", sa.Integer, nullable=False, server_default="0")
          for count in WINDOWED_COUNTS for window in WINDOWS],
        *[sa.Column(f"revenue_{window}", MONEY, nullable=False, server_default="0") for window in WINDOWS],
        sa.Column("frequency", sa.Integer, nullable=False, server_default="0"),
        sa.Column("monetary", MONEY, nullable=False, server_default="0"),
        sa.Column("favourite_category", sa.Text),
        sa.Column("favourite_categories", JSONB, nullable=False, server_default="[]"),
        sa.Column("lifecycle_stage", sa.String(32), nullable=False, server_default="new"),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("user_activity_stage", "user_activity", ["lifecycle_stage"])
    op.create_table(
        "behaviour_triggers",
        sa.Column("trigger_id", sa.String(400), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("user_key", sa.String(256), nullable=False),
        sa.Column("episode", sa.String(256), nullable=False),
        sa.Column("fired_at", TS, nullable=False),
        sa.Column("details", JSONB, nullable=False, server_default="{}"),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("behaviour_triggers_user", "behaviour_triggers", ["user_key", "fired_at"])


def downgrade() -> None:
    op.drop_table("behaviour_triggers")
    op.drop_table("user_activity")
