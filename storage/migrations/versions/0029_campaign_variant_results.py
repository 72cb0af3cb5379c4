"""Campaign variants for the dashboard (issue 23, item 4): the view campaign_variant_results.

The experiment report (campaigns/experiment.py) is computed in Python; Grafana reads SQL. This view
gives, per campaign and arm (``holdout`` and each variant), the report's per-user numbers over the
campaign's conversion window (intent to treat, the union of a user's episode windows, orders once per
order id, net of their refunds) and each variant's lifts against the holdout with 95% intervals:
conversion by the Wald interval (lift.py's, exactly), revenue per user by Welch's interval on values
winsorised as the report does (experiment_stats.winsorise: at most the 99th percentile of the variant's and
the holdout's amounts above 0, at least the 1st of those below 0; zeros set no bound), and ROI.

PostgreSQL has no Student's t quantile: the view uses its Cornish-Fisher expansion in 1/df (terms to
df^-4), within 4e-6 (relative) of the exact quantile for df >= 10, 1.2e-7 for df >= 20. The report's
verdicts (Holm-adjusted p-values) stay in the report; the intervals here are per comparison, as there.
tests/integration/test_business_dashboard.py holds this view to ``campaign_dispatch.report``.

Revision ID: 0029
"""
from alembic import op

revision = "0029"
down_revision = "0024"  # campaign_deliveries.variant
branch_labels = None
depends_on = None

Z = 1.959963984540054  # the normal 97.5% quantile (lift.Z95)
# Cornish-Fisher: t(0.975, df) = Z + sum(C[k] / df^k), k = 1..4 (Abramowitz & Stegun 26.7.5)
C = ((Z ** 3 + Z) / 4,
     (5 * Z ** 5 + 16 * Z ** 3 + 3 * Z) / 96,
     (3 * Z ** 7 + 19 * Z ** 5 + 17 * Z ** 3 - 15 * Z) / 384,
     (79 * Z ** 9 + 776 * Z ** 7 + 1482 * Z ** 5 - 1920 * Z ** 3 - 945 * Z) / 92160)
T_QUANTILE = f"({Z!r} + " + " + ".join(f"{c!r} / df ^ {k}" for k, c in enumerate(C, 1)) + ")"

VIEW = f"""
CREATE VIEW campaign_variant_results AS
WITH campaign AS (
    SELECT name AS campaign, coalesce((definition->>'conversion_window_days')::int, 7) AS days,
           coalesce((definition->>'cost_per_message')::numeric, 0) AS cost_per_message,
           coalesce((definition->>'fixed_cost')::numeric, 0) AS fixed_cost,
           coalesce(nullif(definition->'variants', '[]'::jsonb), '[{{"name": "default"}}]'::jsonb) AS variants
      FROM campaigns
), arms AS (
    SELECT c.campaign, v.position::int AS position, v.variant->>'name' AS arm,
           coalesce((v.variant->>'cost_per_message')::numeric, c.cost_per_message) AS cost_per_message, c.fixed_cost
      FROM campaign c CROSS JOIN LATERAL jsonb_array_elements(c.variants) WITH ORDINALITY AS v(variant, position)
     UNION ALL
    SELECT campaign, 0, 'holdout', NULL, NULL FROM campaign
), assigned AS (
    SELECT d.campaign, d.user_key, d.triggered_at, d.status = 'sent' AS sent, c.days,
           CASE WHEN d.status = 'holdout' THEN 'holdout' ELSE coalesce(d.variant, c.variants->0->>'name') END AS arm
      FROM campaign_deliveries d JOIN campaign c USING (campaign)
     WHERE d.status <> 'opted_out'
), users AS (
    SELECT campaign, arm, user_key, count(*) AS episodes, count(*) FILTER (WHERE sent) AS sent
      FROM assigned GROUP BY campaign, arm, user_key
), orders AS (
    SELECT DISTINCT ON (a.campaign, a.arm, a.user_key, coalesce(e.order_id, e.event_id))
           a.campaign, a.arm, a.user_key, e.order_id, coalesce(e.revenue, 0) AS revenue
      FROM assigned a
      JOIN events e ON e.user_key = a.user_key AND e.kind = 'purchase' AND e.event_time > a.triggered_at
                   AND e.event_time <= a.triggered_at + make_interval(days => a.days)
     ORDER BY a.campaign, a.arm, a.user_key, coalesce(e.order_id, e.event_id), e.event_time, e.event_id
), net AS (
    SELECT o.campaign, o.arm, o.user_key, count(*) AS orders,
           sum(o.revenue - coalesce((SELECT sum(coalesce(r.revenue, 0)) FROM events r
                                      WHERE r.user_key = o.user_key AND r.kind = 'refund'
                                        AND r.order_id = o.order_id), 0)) AS revenue
      FROM orders o GROUP BY o.campaign, o.arm, o.user_key
), outcomes AS (
    SELECT u.campaign, u.arm, u.episodes, u.sent, coalesce(n.orders, 0) > 0 AS converted,
           coalesce(n.revenue, 0) AS revenue
      FROM users u LEFT JOIN net n USING (campaign, arm, user_key)
), summary AS (
    SELECT a.campaign, a.position, a.arm, a.cost_per_message, a.fixed_cost, count(o.arm) AS users,
           coalesce(sum(o.episodes), 0) AS episodes, coalesce(sum(o.sent), 0) AS messages_sent,
           count(*) FILTER (WHERE o.converted) AS converted, coalesce(sum(o.revenue), 0) AS revenue
      FROM arms a LEFT JOIN outcomes o USING (campaign, arm)
     GROUP BY a.campaign, a.position, a.arm, a.cost_per_message, a.fixed_cost
), pairs AS (  -- each variant's users with the holdout's: winsorised at bounds from both
    SELECT a.campaign, a.arm AS variant, o.arm = 'holdout' AS holdout, o.revenue::float8 AS revenue
      FROM arms a JOIN outcomes o ON o.campaign = a.campaign AND o.arm IN (a.arm, 'holdout')
     WHERE a.arm <> 'holdout'
), bounds AS (
    SELECT campaign, variant,
           coalesce(percentile_cont(0.01) WITHIN GROUP (ORDER BY revenue) FILTER (WHERE revenue < 0), 0) AS low,
           coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY revenue) FILTER (WHERE revenue > 0), 0) AS high
      FROM pairs GROUP BY campaign, variant
), moments AS (
    SELECT p.campaign, p.variant,
           count(*) FILTER (WHERE NOT holdout) AS nt, count(*) FILTER (WHERE holdout) AS nh,
           avg(least(greatest(revenue, low), high)) FILTER (WHERE NOT holdout) AS mt,
           avg(least(greatest(revenue, low), high)) FILTER (WHERE holdout) AS mh,
           var_samp(least(greatest(revenue, low), high)) FILTER (WHERE NOT holdout) AS vt,
           var_samp(least(greatest(revenue, low), high)) FILTER (WHERE holdout) AS vh
      FROM pairs p JOIN bounds b USING (campaign, variant)
     GROUP BY p.campaign, p.variant
), welch AS (  -- Welch's interval, as experiment_stats.welch (None below 2 users an arm or no variance)
    SELECT campaign, variant, mt - mh AS lift, sqrt(qt + qh) AS se,
           (qt + qh) ^ 2 / (qt ^ 2 / (nt - 1) + qh ^ 2 / (nh - 1)) AS df
      FROM (SELECT *, vt / nt AS qt, vh / nh AS qh FROM moments WHERE nt >= 2 AND nh >= 2) m
     WHERE qt + qh > 0
), compared AS (
    SELECT s.*, sum(s.users) FILTER (WHERE s.arm <> 'holdout') OVER (PARTITION BY s.campaign) AS variant_users,
           h.users AS holdout_users, h.converted AS holdout_converted,
           w.lift AS revenue_lift, w.lift - {T_QUANTILE.replace('df', 'w.df')} * w.se AS revenue_lift_low,
           w.lift + {T_QUANTILE.replace('df', 'w.df')} * w.se AS revenue_lift_high
      FROM summary s
      JOIN summary h ON h.campaign = s.campaign AND h.arm = 'holdout'
      LEFT JOIN welch w ON w.campaign = s.campaign AND w.variant = s.arm
), rates AS (
    SELECT *, converted::float8 / nullif(users, 0) AS pt, holdout_converted::float8 / nullif(holdout_users, 0) AS ph,
           CASE WHEN arm <> 'holdout' THEN messages_sent * cost_per_message
                + coalesce(fixed_cost * users / nullif(variant_users, 0), 0) END AS cost
      FROM compared
), lifts AS (
    SELECT *, CASE WHEN arm <> 'holdout' THEN pt - ph END AS conversion_lift,
           {Z!r} * sqrt(pt * (1 - pt) / users + ph * (1 - ph) / holdout_users) AS conversion_margin,
           users * revenue_lift AS incremental_revenue
      FROM rates
)
SELECT campaign, position, arm, users, episodes, messages_sent, converted, pt AS conversion_rate,
       round(revenue, 4) AS revenue, revenue::float8 / nullif(users, 0) AS revenue_per_user,
       conversion_lift,
       CASE WHEN arm <> 'holdout' THEN conversion_lift - conversion_margin END AS conversion_lift_low,
       CASE WHEN arm <> 'holdout' THEN conversion_lift + conversion_margin END AS conversion_lift_high,
       revenue_lift AS revenue_per_user_lift, revenue_lift_low AS revenue_per_user_lift_low,
       revenue_lift_high AS revenue_per_user_lift_high,
       round(cost, 4) AS cost, incremental_revenue,
       CASE WHEN cost > 0 THEN (incremental_revenue - cost::float8) / cost::float8 END AS roi,
       CASE WHEN cost > 0 THEN (users * revenue_lift_low - cost::float8) / cost::float8 END AS roi_low,
       CASE WHEN cost > 0 THEN (users * revenue_lift_high - cost::float8) / cost::float8 END AS roi_high
  FROM lifts
"""


def upgrade() -> None:
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW campaign_variant_results")
