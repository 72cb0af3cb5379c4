"""Edge enrichment on events (parsed user agent, anonymised IP, bot flag); bad row v2 in dead_letters.

Revision ID: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("events", sa.Column("browser", sa.String(128)))
    op.add_column("events", sa.Column("browser_version", sa.String(32)))
    op.add_column("events", sa.Column("os", sa.String(128)))
    op.add_column("events", sa.Column("os_version", sa.String(32)))
    op.add_column("events", sa.Column("device", sa.String(128)))
    op.add_column("events", sa.Column("is_bot", sa.Boolean))
    op.add_column("events", sa.Column("anonymized_ip", sa.String(45)))

    op.add_column("dead_letters", sa.Column("schema_version", sa.Integer))
    op.add_column("dead_letters", sa.Column("failure_type", sa.String(64)))
    op.add_column("dead_letters", sa.Column("messages", JSONB))
    op.add_column("dead_letters", sa.Column("request", JSONB))
    op.add_column("dead_letters", sa.Column("replay_of", sa.String(300)))
    op.add_column("dead_letters", sa.Column("replayed_at", TS))
    op.create_index("dead_letters_received", "dead_letters", ["received_at"])


def downgrade() -> None:
    op.drop_index("dead_letters_received", "dead_letters")
    for column in ("replayed_at", "replay_of", "request", "messages", "failure_type", "schema_version"):
        op.drop_column("dead_letters", column)
    for column in ("anonymized_ip", "is_bot", "device", "os_version", "os", "browser_version", "browser"):
        op.drop_column("events", column)
