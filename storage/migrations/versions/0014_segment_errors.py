"""Segments keep the reason their membership could not be refreshed.

The segments runner ended on the first segment whose definition or statement failed (a stored
definition the language no longer accepts, a reference to such a segment, a value PostgreSQL
refuses), and so stopped maintaining every other segment. It now skips that segment and records why
here (cleared by the next refresh that succeeds); `spoor segments list`/`show` and `GET /segments`
show it.

Revision ID: 0014
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0006"  # segments (0006)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("segments", sa.Column("error", sa.Text))
    op.add_column("segments", sa.Column("failed_since", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("segments", "failed_since")
    op.drop_column("segments", "error")
