"""Browser origins allowed per write key (CORS), for the browser SDK.

Revision ID: 0007
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0007"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Empty: the key is not for browsers, so any request carrying an Origin header is refused.
    op.add_column("write_keys", sa.Column("allowed_origins", ARRAY(sa.Text), nullable=False,
                                          server_default="{}"))


def downgrade() -> None:
    op.drop_column("write_keys", "allowed_origins")
