"""A campaign's experiment report: each variant against the holdout, per user, with ROI.

The unit is the user (assignment is per user, so users are the independent draws; one user may have
several episodes). The analysis is by intent to treat: a user counts in the arm they were assigned to,
whether or not a message could be sent (capped, expired, failed), as the holdout counts every user it
would have reached. Opted-out users are in no arm.

A user's outcome covers the union of their episodes' windows (``triggered_at``, ``triggered_at + days``]:
``converted`` if a purchase falls in it; ``revenue``: the orders placed in it (one per order id, else per
event), net of their refunds (at any time, matched by order id).

``analyse`` (pure) turns per-user outcomes into the report (statistics: experiment_stats.py):
- conversion: ``lift.lift`` (Wald and Katz intervals, as the campaign report always had) with the
  Wald z-test's p-value;
- revenue per user: Welch's t on values winsorised at the 99th percentile of the pooled orders (and the
  1st of the net refunds; zeros, users who bought nothing, do not set the bounds). Revenue per user
  is mostly zeros with a long tail of large orders: one order can swing a mean; winsorising keeps the
  mean (which ROI needs, unlike a median) while bounding any one user's weight; Welch allows the arms
  their own variance. It is deterministic and linear in users (a bootstrap is neither);
- ROI = (incremental revenue - cost) / cost, where incremental revenue = variant users x the winsorised
  revenue lift per user and cost = messages sent x cost per message + the fixed cost (shared between
  variants by users); its interval follows the incremental revenue's;
- the verdict uses Holm-adjusted p-values when several variants face the one holdout;
- warnings when a test is underpowered.
"""

from sqlalchemy import Connection, text

from spoor.campaigns import experiment_stats as st
from spoor.campaigns.campaign_spec import CampaignSpec
from spoor.campaigns.lift import lift

HOLDOUT = "holdout"
MIN_USERS_PER_ARM = 100
MIN_CONVERSIONS_PER_ARM = 10  # below it the Wald interval's coverage falls short of 95%

USER_OUTCOMES = text("""
    WITH assigned AS (
        SELECT user_key, triggered_at, status = 'sent' AS sent,
               CASE WHEN status = 'holdout' THEN 'holdout' ELSE coalesce(variant, :first_variant) END AS arm
          FROM campaign_deliveries
         WHERE campaign = :campaign AND status <> 'opted_out'
    ), users AS (
        SELECT arm, user_key, count(*) AS episodes, count(*) FILTER (WHERE sent) AS sent
          FROM assigned GROUP BY arm, user_key
    ), orders AS (
        SELECT DISTINCT ON (a.arm, a.user_key, coalesce(e.order_id, e.event_id))
               a.arm, a.user_key, e.order_id, coalesce(e.revenue, 0) AS revenue
          FROM assigned a
          JOIN events e ON e.user_key = a.user_key AND e.kind = 'purchase' AND e.event_time > a.triggered_at
                       AND e.event_time <= a.triggered_at + make_interval(days => :days)
         ORDER BY a.arm, a.user_key, coalesce(e.order_id, e.event_id), e.event_time, e.event_id
    ), net AS (
        SELECT o.arm, o.user_key, count(*) AS orders,
               sum(o.revenue - coalesce((SELECT sum(coalesce(r.revenue, 0)) FROM events r
                                          WHERE r.user_key = o.user_key AND r.kind = 'refund'
                                            AND r.order_id = o.order_id), 0)) AS revenue
          FROM orders o GROUP BY o.arm, o.user_key
    )
    SELECT u.arm, u.episodes, u.sent, coalesce(n.orders, 0) AS orders, coalesce(n.revenue, 0) AS revenue
      FROM users u LEFT JOIN net n ON n.arm = u.arm AND n.user_key = u.user_key
""")


def user_outcomes(conn: Connection, spec: CampaignSpec, days: int) -> dict[str, list[tuple[int, int, bool, float]]]:
    """Per arm (variant name or ``holdout``): one ``(episodes, messages sent, converted, net revenue)`` per user."""
    arms: dict[str, list[tuple[int, int, bool, float]]] = {}
    for row in conn.execute(USER_OUTCOMES, {"campaign": spec.name, "days": days,
                                            "first_variant": spec.arms()[0].name}):
        arms.setdefault(row.arm, []).append((row.episodes, row.sent, row.orders > 0, float(row.revenue)))
    return arms


def _arm_summary(users: list[tuple[int, int, bool, float]]) -> dict:
    n = len(users)
    converted, revenue = sum(u[2] for u in users), sum(u[3] for u in users)
    return {"users": n, "episodes": sum(u[0] for u in users), "messages_sent": sum(u[1] for u in users),
            "converted": converted, "conversion_rate": converted / n if n else None,
            "revenue": round(revenue, 4), "revenue_per_user": revenue / n if n else None}


def _conversion(treated: dict, holdout: dict) -> dict:
    out = lift(treated["users"], treated["converted"], holdout["users"], holdout["converted"])
    return {"absolute_lift": out["absolute_lift"], "absolute_lift_ci": out["absolute_lift_ci"],
            "relative_lift": out["relative_lift"], "relative_lift_ci": out["relative_lift_ci"],
            "p_value": st.conversion_p_value(treated["users"], treated["converted"], holdout["users"],
                                             holdout["converted"]),
            "mde_absolute": st.conversion_mde(treated["users"], holdout["users"], holdout["conversion_rate"] or 0.0)
            if holdout["users"] else None}


def _revenue(treated: list[float], holdout: list[float]) -> dict:
    out = {"method": "welch_t_winsorised_1_99", "winsorised_to": None, "treated_mean": None, "holdout_mean": None,
           "absolute_lift": None, "absolute_lift_ci": None, "relative_lift": None, "relative_lift_ci": None,
           "p_value": None, "mde_absolute": None}
    if not treated or not holdout:
        return out
    (t, h), bounds = st.winsorise(treated, holdout)
    test = st.welch(t, h)
    out.update(winsorised_to=list(bounds), mde_absolute=st.mean_mde(t, h))
    if test:
        out.update(treated_mean=test["treated_mean"], holdout_mean=test["holdout_mean"],
                   absolute_lift=test["difference"], absolute_lift_ci=test["difference_ci"],
                   relative_lift=test["relative"], relative_lift_ci=test["relative_ci"], p_value=test["p_value"])
    return out


def _roi(users: int, revenue: dict, cost: float) -> dict:
    """Incremental revenue = users x winsorised revenue lift per user; ROI = (incremental - cost) / cost."""
    lift_, ci = revenue["absolute_lift"], revenue["absolute_lift_ci"]
    incremental = None if lift_ is None else users * lift_
    incremental_ci = None if ci is None else [users * ci[0], users * ci[1]]
    roi = roi_ci = None
    if cost > 0 and incremental is not None:
        roi = (incremental - cost) / cost
        roi_ci = None if incremental_ci is None else [(x - cost) / cost for x in incremental_ci]
    return {"cost": round(cost, 4), "incremental_revenue": incremental, "incremental_revenue_ci": incremental_ci,
            "roi": roi, "roi_ci": roi_ci}


def _warnings(name: str, treated: dict, holdout: dict, conversion: dict, revenue: dict) -> list[str]:
    out = []
    for arm, summary in ((name, treated), (HOLDOUT, holdout)):
        if summary["users"] < MIN_USERS_PER_ARM:
            out.append(f"underpowered: {arm} has {summary['users']} users (fewer than {MIN_USERS_PER_ARM})")
        elif summary["converted"] < MIN_CONVERSIONS_PER_ARM:
            out.append(f"{arm} has {summary['converted']} conversions (fewer than {MIN_CONVERSIONS_PER_ARM}): "
                       "the conversion interval is approximate")
    for metric, result in (("conversion", conversion), ("revenue per user", revenue)):
        mde, observed = result["mde_absolute"], result["absolute_lift"]
        if mde is not None and observed is not None and mde > abs(observed) and \
                not result["verdict"].startswith("significant"):
            out.append(f"underpowered: the {metric} lift detectable at 80% power is {mde:.4g}, more than the "
                       f"observed {observed:.4g}: an effect this small would often go unnoticed")
    return out


def analyse(spec: CampaignSpec, outcomes: dict[str, list[tuple[int, int, bool, float]]]) -> dict:
    """The experiment report from per-user outcomes (``user_outcomes``). Pure."""
    holdout_users = outcomes.get(HOLDOUT, [])
    holdout = _arm_summary(holdout_users)
    holdout_revenue = [u[3] for u in holdout_users]
    arms = spec.arms()
    total_users = sum(len(outcomes.get(v.name, [])) for v in arms)
    variants = []
    for variant in arms:
        users = outcomes.get(variant.name, [])
        summary = _arm_summary(users)
        conversion = _conversion(summary, holdout)
        revenue = _revenue([u[3] for u in users], holdout_revenue)
        per_message = spec.cost_per_message if variant.cost_per_message is None else variant.cost_per_message
        cost = summary["messages_sent"] * per_message + (spec.fixed_cost * len(users) / total_users
                                                         if total_users else 0.0)
        variants.append({"name": variant.name, "weight": variant.weight, **summary, "conversion": conversion,
                         "revenue_per_user_lift": revenue, **_roi(len(users), revenue, cost)})
    for metric in ("conversion", "revenue_per_user_lift"):
        adjusted = st.holm([v[metric]["p_value"] for v in variants])
        for v, p in zip(variants, adjusted):
            v[metric]["p_value_holm"] = p
            v[metric]["verdict"] = st.verdict(v[metric]["absolute_lift"], p)
    for v in variants:
        v["warnings"] = _warnings(v["name"], v, holdout, v["conversion"], v["revenue_per_user_lift"])
    return {"unit": "user", "analysis": "intent_to_treat", "holdout": holdout, "variants": variants,
            "overall": _overall(spec, outcomes, holdout, holdout_revenue, variants),
            "warnings": _campaign_warnings(spec, holdout, variants)}


def _overall(spec: CampaignSpec, outcomes: dict, holdout: dict, holdout_revenue: list[float],
             variants: list[dict]) -> dict:
    """Every variant together against the holdout: the campaign as it ran."""
    users = [u for v in spec.arms() for u in outcomes.get(v.name, [])]
    summary = _arm_summary(users)
    conversion = _conversion(summary, holdout)
    revenue = _revenue([u[3] for u in users], holdout_revenue)
    conversion["verdict"] = st.verdict(conversion["absolute_lift"], conversion["p_value"])
    revenue["verdict"] = st.verdict(revenue["absolute_lift"], revenue["p_value"])
    cost = sum(v["cost"] for v in variants) if users else spec.fixed_cost
    return {**summary, "conversion": conversion, "revenue_per_user_lift": revenue, **_roi(len(users), revenue, cost)}


def _campaign_warnings(spec: CampaignSpec, holdout: dict, variants: list[dict]) -> list[str]:
    out = []
    if not holdout["users"]:
        out.append("no holdout users: no lift or ROI can be measured (set holdout_percent)")
    if not spec.cost_per_message and not spec.fixed_cost and all(v.cost_per_message is None for v in spec.arms()):
        out.append("no cost in the campaign (cost_per_message, fixed_cost): ROI is undefined")
    if len(variants) > 1:
        out.append(f"{len(variants)} variants against one holdout: verdicts use Holm-adjusted p-values "
                   "(p_value_holm); the 95% intervals are per comparison")
    return out
