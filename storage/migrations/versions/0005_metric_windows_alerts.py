"""Business-metric windows and metric alerts.

Revision ID: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
COUNTS = ("events", "page_views", "product_views", "clicks", "cart_adds", "cart_removes", "checkouts",
          "orders", "identifies", "custom_events", "active_users", "sessions", "viewers", "carters",
          "buyers", "dead_letters", "collector_rejects")


def upgrade() -> None:
    op.create_table(
        "metric_windows",
        sa.Column("resolution", sa.String(4), primary_key=True),
        sa.Column("window_start", TS, primary_key=True),
        sa.Column("dimension", sa.String(200), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("window_end", TS, nullable=False),
        *[sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in COUNTS],
        sa.Column("revenue", sa.Numeric(18, 4), nullable=False, server_default="0"),
        sa.Column("partial", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("written_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("metric_windows_series", "metric_windows", ["resolution", "dimension", "window_end"])
    op.create_index("metric_windows_end", "metric_windows", ["resolution", "window_end"])
    op.create_table(
        "metric_watermarks",
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("closed_until", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("rule_id", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("dimension", sa.String(200), nullable=False),
        sa.Column("resolution", sa.String(4), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("fired_at", TS),
        sa.Column("resolved_at", TS),
        sa.Column("evidence", JSONB, nullable=False, server_default="{}"),
        sa.Column("summary", sa.Text),
        sa.Column("runbook", sa.Text),
        sa.Column("acked_at", TS),
        sa.Column("acked_by", sa.String(128)),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("fingerprint", "started_at", name="alerts_episode"),
    )
    op.create_index("alerts_status", "alerts", ["status", "started_at"])
    op.create_table(
        "alert_silences",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("matcher", sa.String(200), nullable=False),  # a rule id or an alert fingerprint
        sa.Column("until", TS, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "alert_cursors",
        sa.Column("resolution", sa.String(4), primary_key=True),
        sa.Column("evaluated_until", TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("alert_cursors", "alert_silences", "alerts", "metric_watermarks", "metric_windows"):
        op.drop_table(table)
