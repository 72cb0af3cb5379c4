"""Consent per purpose (issue 24, docs/privacy.md#consent): user_consent gets analytics, marketing and
personalisation as recorded by `spoor users consent` or the API (null: nothing recorded), the same three
as the person's pages last stated them (context.consent.categoryPreferences, recorded by the worker) with
the time of that statement, and an index on updated_at for the worker's read of what changed.

Revision ID: 0025
"""
import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0006"  # user_consent
branch_labels = None
depends_on = None

PURPOSES = ("analytics", "marketing", "personalisation")


def upgrade() -> None:
    for purpose in PURPOSES:
        op.add_column("user_consent", sa.Column(purpose, sa.Boolean))
    for purpose in PURPOSES:
        op.add_column("user_consent", sa.Column(f"page_{purpose}", sa.Boolean))
    op.add_column("user_consent", sa.Column("page_stated_at", sa.DateTime(timezone=True)))
    op.create_index("user_consent_updated_at", "user_consent", ["updated_at"])


def downgrade() -> None:
    op.drop_index("user_consent_updated_at", table_name="user_consent")
    op.drop_column("user_consent", "page_stated_at")
    for purpose in PURPOSES:
        op.drop_column("user_consent", f"page_{purpose}")
        op.drop_column("user_consent", purpose)
