"""Journeys: each session's steps (page types, dwell times, searches) and the daily views over them,
and the repeat-purchase rate per cohort month over the stored orders.

Days are UTC days of the step (of the session's start for page depth, of the first order for cohorts).
The repeat-purchase view reads ``events`` (every accepted order once, late ones and merged ids
included), so it is exact; a partial index on the orders keeps it to the purchases.

Revision ID: 0022
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0022"
down_revision = "0008"  # sessions: page depth per day of the session's start
branch_labels = None
depends_on = None

SANKEY_STEPS = 6  # the Sankey view's first steps of a session (its nodes are "<step>. <page type>")

STEPS = """
SELECT j.user_key, j.session_id, s.step, to_timestamp(s.at) AS at, (to_timestamp(s.at) AT TIME ZONE 'UTC')::date AS day,
       s.page_type, s.product_id, s.dwell_s, s.dwell_source,
       (s.step = cardinality(j.page_type) AND j.steps_beyond = 0) AS last_step,
       j.page_type[s.step + 1] AS next_type,
       s.search_term, s.result_count, s.cart_add_after
  FROM session_journeys j
 CROSS JOIN LATERAL unnest(j.step_times, j.page_type, j.product_id, j.dwell_s, j.dwell_source, j.search_term,
                           j.result_count, j.cart_add_after)
       WITH ORDINALITY AS s(at, page_type, product_id, dwell_s, dwell_source, search_term, result_count,
                            cart_add_after, step)"""

DWELL = """count(*) AS views, count(dwell_s) AS timed,
       count(*) FILTER (WHERE dwell_source = 'visible') AS visible_timed,
       round(avg(dwell_s::numeric), 3) AS avg_dwell_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY dwell_s) AS median_dwell_s,
       count(*) FILTER (WHERE last_step) AS last_pages"""


REPEAT_DAYS = (30, 60, 90)
WITHIN = "second_at <= first_at + interval '{days} days'"


def _share(part: str, whole: str) -> str:
    return f"round(({part})::numeric / nullif({whole}, 0), 4)"


VIEWS = {
    "journey_steps": STEPS,
    "journey_transitions_daily": (
        "SELECT day, page_type AS from_type, CASE WHEN last_step THEN 'exit' ELSE next_type END AS to_type, "
        "count(*) AS transitions FROM journey_steps WHERE last_step OR next_type IS NOT NULL GROUP BY 1, 2, 3"),
    "journey_exits_daily": (
        "SELECT day, page_type, count(*) AS views, count(DISTINCT (user_key, session_id)) AS sessions, "
        "count(*) FILTER (WHERE last_step) AS exits, "
        f"{_share('count(*) FILTER (WHERE last_step)', 'count(DISTINCT (user_key, session_id))')} AS exit_share "
        "FROM journey_steps GROUP BY 1, 2"),
    "journey_sankey_daily": (
        "SELECT day, step || '. ' || page_type AS source, "
        "CASE WHEN last_step THEN 'exit' ELSE (step + 1) || '. ' || next_type END AS target, count(*) AS sessions "
        f"FROM journey_steps WHERE step <= {SANKEY_STEPS} AND (last_step OR next_type IS NOT NULL) GROUP BY 1, 2, 3"),
    "page_dwell_daily": f"SELECT day, page_type, {DWELL} FROM journey_steps GROUP BY 1, 2",
    "product_dwell_daily": (
        f"SELECT day, product_id, {DWELL} FROM journey_steps "
        "WHERE page_type = 'product' AND product_id IS NOT NULL GROUP BY 1, 2"),
    "journey_depth_daily": (
        "SELECT (s.started_at AT TIME ZONE 'UTC')::date AS day, count(*) AS sessions, "
        "round(avg(j.page_depth), 3) AS avg_page_depth, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY j.page_depth) AS median_page_depth, "
        "count(*) FILTER (WHERE j.page_depth = 1) AS single_page_sessions "
        "FROM session_journeys j JOIN sessions s USING (user_key, session_id) GROUP BY 1"),
    "search_terms_daily": (
        "SELECT day, search_term AS term, count(*) AS searches, "
        "count(*) FILTER (WHERE result_count = 0) AS zero_result_searches, "
        "count(result_count) AS searches_with_count, "
        "count(*) FILTER (WHERE cart_add_after) AS followed_by_cart_add, "
        f"{_share('count(*) FILTER (WHERE cart_add_after)', 'count(*)')} AS cart_add_share "
        "FROM journey_steps WHERE page_type = 'search' GROUP BY 1, 2"),
    # A customer's orders are their purchases, an order id counted once (at its first time); the second
    # order is the next one after the first, however soon. Cohorts younger than 90 days are not complete.
    "repeat_purchase_cohorts": """
WITH orders AS (
    SELECT user_key, min(event_time) AS at FROM events WHERE kind = 'purchase'
     GROUP BY user_key, coalesce(order_id, event_id)
), numbered AS (
    SELECT user_key, at, row_number() OVER (PARTITION BY user_key ORDER BY at) AS n FROM orders
), customers AS (
    SELECT user_key, min(at) FILTER (WHERE n = 1) AS first_at, min(at) FILTER (WHERE n = 2) AS second_at
      FROM numbered WHERE n <= 2 GROUP BY user_key
)
SELECT date_trunc('month', first_at AT TIME ZONE 'UTC')::date AS cohort_month, count(*) AS customers,
       {REPEATS}
  FROM customers GROUP BY 1""".format(REPEATS=",\n       ".join(
        [f"count(*) FILTER (WHERE {WITHIN.format(days=d)}) AS repeat_{d}d" for d in REPEAT_DAYS]
        + [f"{_share(f'count(*) FILTER (WHERE {WITHIN.format(days=d)})', 'count(*)')} AS repeat_rate_{d}d"
           for d in REPEAT_DAYS])),
}


def upgrade() -> None:
    op.create_table(
        "session_journeys",
        sa.Column("user_key", sa.String(256), primary_key=True),
        sa.Column("session_id", sa.String(256), primary_key=True),
        *[sa.Column(name, sa.Integer, nullable=False) for name in ("events", "page_depth", "steps_beyond")],
        sa.Column("step_times", ARRAY(sa.Float), nullable=False),
        *[sa.Column(name, ARRAY(sa.Text), nullable=False) for name in
          ("page_type", "product_id")],
        sa.Column("dwell_s", ARRAY(sa.Float), nullable=False),
        sa.Column("dwell_source", ARRAY(sa.Text), nullable=False),
        sa.Column("search_term", ARRAY(sa.Text), nullable=False),
        sa.Column("result_count", ARRAY(sa.BigInteger), nullable=False),
        sa.Column("cart_add_after", ARRAY(sa.Boolean), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        postgresql_with={"fillfactor": 70},  # rewritten while the session lasts
    )
    op.create_index("events_orders", "events", ["user_key", "event_time"],
                    postgresql_where=sa.text("kind = 'purchase'"))
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    op.drop_index("events_orders", "events")
    op.drop_table("session_journeys")
