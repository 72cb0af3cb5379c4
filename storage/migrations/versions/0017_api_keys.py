"""API keys (issue 22): narrow credentials for the admin API, such as a shop backend's key that may only
read recommendations. Like write keys, only the SHA-256 of a key is stored; ``scope`` says what it may do
(storage/api_keys.py, docs/recommendations.md#serving).

Revision ID: 0017
"""
import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"  # the recommendations (0016) are what the first scope reads
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("scope IN ('recommendations')", name="api_keys_scope"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
