"""Segments and campaigns: definitions, membership and its history, consent, deliveries, audit log.

Revision ID: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("builtin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, server_default="draft"),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("last_full_recompute_at", TS),
    )
    op.create_table(
        "segment_members",
        sa.Column("segment", sa.String(64), sa.ForeignKey("segments.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("entered_at", TS, nullable=False),
    )
    op.create_index("segment_members_user", "segment_members", ["user_key"])
    op.create_table(
        "segment_transitions",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("segment", sa.String(64), sa.ForeignKey("segments.name", ondelete="CASCADE"), nullable=False),
        sa.Column("user_key", sa.String(256), nullable=False),
        sa.Column("change", sa.String(8), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("published_at", TS),
        sa.CheckConstraint("change IN ('enter', 'exit')", name="segment_transitions_change"),
    )
    op.create_index("segment_transitions_segment_at", "segment_transitions", ["segment", "at"])
    op.create_index("segment_transitions_user", "segment_transitions", ["user_key"])
    op.create_index("segment_transitions_unpublished", "segment_transitions", ["id"],
                    postgresql_where=sa.text("published_at IS NULL"))
    op.create_table(
        "segment_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("changed_since", TS, nullable=False),
    )
    op.create_table(
        "user_consent",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("opted_out", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("time_zone", sa.String(64)),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "campaigns",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="draft"),
        sa.Column("launched_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "campaign_deliveries",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("campaign", sa.String(64), sa.ForeignKey("campaigns.name", ondelete="CASCADE"), nullable=False),
        sa.Column("user_key", sa.String(256), nullable=False),
        sa.Column("episode", sa.String(400), nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),
        sa.Column("triggered_at", TS, nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_response", sa.Text),
        sa.Column("sent_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("campaign_deliveries_episode", "campaign_deliveries", ["campaign", "user_key", "episode"],
                    unique=True)
    op.create_index("campaign_deliveries_due", "campaign_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("campaign_deliveries_user", "campaign_deliveries", ["user_key", "sent_at"])
    op.create_table(
        "campaign_attempts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.BigInteger, sa.ForeignKey("campaign_deliveries.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("response", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "privacy_audit_log",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("user_key_sha256", sa.String(64), nullable=False, index=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("details", JSONB, nullable=False, server_default="{}"),
        sa.Column("at", TS, nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    for table in ("privacy_audit_log", "campaign_attempts", "campaign_deliveries", "campaigns", "user_consent",
                  "segment_cursors", "segment_transitions", "segment_members", "segments"):
        op.drop_table(table)
