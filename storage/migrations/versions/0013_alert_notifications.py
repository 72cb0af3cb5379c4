"""Alert notifications outbox: one row per (alert transition, notifier), stored with the transition.

Notifications used to live only in memory: a worker that died between storing a transition and the
receiver's answer lost them. The rows are written in the transaction that stores the transition and
advances the evaluation cursor, and are marked sent (or failed) by the notifiers.

Revision ID: 0013
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0013"
down_revision = "0010"  # alerts (0005)
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_notifications",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.BigInteger, sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("notifier", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # firing or resolved
        sa.Column("alert", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("next_attempt_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("sent_at", TS),
        sa.Column("failed_at", TS),  # gave up
        sa.UniqueConstraint("alert_id", "notifier", "status", name="alert_notifications_transition"),
    )
    op.create_index("alert_notifications_pending", "alert_notifications", ["notifier", "id"],
                    postgresql_where=sa.text("sent_at IS NULL AND failed_at IS NULL"))


def downgrade() -> None:
    op.drop_table("alert_notifications")
