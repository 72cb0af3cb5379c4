"""Behaviour analytics: sessions, funnel views, recency columns of user_activity.

Revision ID: 0008
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0008"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
TRAFFIC_SOURCE_SQL = ("coalesce(nullif(utm_source, ''), "
                      "lower(substring(referrer from '^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)')), 'direct')")

# Funnel step counts are sessions that reached the step (a shop may send no "Checkout Started").
STEPS = """
    count(*) AS sessions,
    count(*) FILTER (WHERE {viewed}) AS viewed,
    count(*) FILTER (WHERE {carted}) AS carted,
    count(*) FILTER (WHERE {checked_out}) AS checked_out,
    count(*) FILTER (WHERE {purchased}) AS purchased,
    round(count(*) FILTER (WHERE {carted})::numeric / nullif(count(*) FILTER (WHERE {viewed}), 0), 4) AS view_to_cart,
    round(count(*) FILTER (WHERE {checked_out})::numeric / nullif(count(*) FILTER (WHERE {carted}), 0), 4) AS cart_to_checkout,
    round(count(*) FILTER (WHERE {purchased})::numeric / nullif(count(*) FILTER (WHERE {checked_out}), 0), 4) AS checkout_to_purchase,
    round(count(*) FILTER (WHERE {purchased})::numeric / nullif(count(*) FILTER (WHERE {viewed}), 0), 4) AS view_to_purchase,
    round(count(*) FILTER (WHERE {carted} AND NOT {purchased})::numeric
          / nullif(count(*) FILTER (WHERE {carted}), 0), 4) AS cart_abandonment_rate"""
SESSION_STEPS = STEPS.format(viewed="product_views > 0", carted="reached_cart", checked_out="reached_checkout",
                             purchased="reached_purchase")
CATEGORY_STEPS = STEPS.format(viewed="category = ANY(view_categories)", carted="category = ANY(cart_categories)",
                              checked_out="(reached_checkout AND category = ANY(cart_categories))",
                              purchased="category = ANY(purchase_categories)")
DAY = "(started_at AT TIME ZONE 'UTC')::date"

VIEWS = {
    "funnel_daily": f"SELECT {DAY} AS day, {SESSION_STEPS} FROM sessions GROUP BY 1",
    "funnel_daily_by_source": f"SELECT {DAY} AS day, traffic_source, {SESSION_STEPS} FROM sessions GROUP BY 1, 2",
    "funnel_daily_by_category": (
        f"SELECT {DAY} AS day, category, {CATEGORY_STEPS} FROM sessions "
        "CROSS JOIN LATERAL (SELECT DISTINCT c FROM unnest(view_categories || cart_categories "
        "|| purchase_categories) AS c) AS categories(category) GROUP BY 1, 2"),
}


def upgrade() -> None:
    categories = ARRAY(sa.Text)
    op.create_table(
        "sessions",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("session_id", sa.String(256), primary_key=True),
        sa.Column("client_session", sa.Boolean, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        *[sa.Column(name, sa.Integer, nullable=False) for name in
          ("events", "page_views", "product_views", "cart_adds", "checkouts", "purchases")],
        sa.Column("revenue", sa.Numeric(18, 4), nullable=False),
        *[sa.Column(name, sa.Boolean, nullable=False) for name in
          ("reached_cart", "reached_checkout", "reached_purchase")],
        *[sa.Column(name, sa.Text) for name in ("entry_page", "referrer", "utm_source", "utm_campaign")],
        *[sa.Column(name, categories, nullable=False, server_default="{}") for name in
          ("view_categories", "cart_categories", "purchase_categories")],
        sa.Column("traffic_source", sa.Text, sa.Computed(TRAFFIC_SOURCE_SQL, persisted=True)),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("sessions_started_at", "sessions", ["started_at"])
    op.add_column("user_activity", sa.Column("last_seen_at", TS))
    op.add_column("user_activity", sa.Column("last_purchase_at", TS))
    op.add_column("user_activity", sa.Column("recency_days", sa.Integer))
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW {name}")
    op.drop_column("user_activity", "recency_days")
    op.drop_column("user_activity", "last_purchase_at")
    op.drop_column("user_activity", "last_seen_at")
    op.drop_table("sessions")
