"""Initial schema: user_profiles, events, dead_letters, write_keys.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.Numeric(18, 4)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "user_profiles",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("user_id", sa.String(256)),
        sa.Column("first_seen_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        *[sa.Column(name, sa.BigInteger, nullable=False) for name in (
            "events", "page_views", "product_views", "clicks", "cart_adds",
            "cart_removes", "checkouts", "orders")],
        sa.Column("distinct_products_viewed", sa.Integer, nullable=False),
        sa.Column("cart_value", MONEY, nullable=False),
        sa.Column("revenue", MONEY, nullable=False),
        sa.Column("first_purchase_at", TS),
        sa.Column("last_purchase_at", TS),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(256), primary_key=True),
        sa.Column("user_key", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("event_time", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("product_id", sa.String(256)),
        sa.Column("category", sa.Text),
        sa.Column("price", MONEY),
        sa.Column("quantity", sa.Integer),
        sa.Column("order_id", sa.String(256)),
        sa.Column("revenue", MONEY),
        sa.Column("currency", sa.String(3)),
        sa.Column("persisted_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("events_user_time", "events", ["user_key", "event_time"])
    op.create_index("events_product_kind", "events", ["product_id", "kind"])
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("processor", sa.String(64), nullable=False),
        sa.Column("field", sa.String(256)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source", sa.String(64)),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_table(
        "write_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", TS),
    )


def downgrade() -> None:
    for table in ("write_keys", "dead_letters", "events", "user_profiles"):
        op.drop_table(table)
