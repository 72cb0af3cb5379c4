"""The business dashboard's journey, attribution and campaign panels (issue 23, item 4) on the real
PostgreSQL after migrations: each panel's SQL, with Grafana's macros expanded for a fixed range, runs on
seeded rows whose answers are known (some rows lie outside the range), and its columns and values are
checked; the campaign panel equals ``spoor campaigns report`` on the same rows."""

import random
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import insert, text

from spoor.campaigns import campaign_dispatch
from spoor.campaigns.campaign_spec import parse_campaign
from spoor.storage.attribution_tables import OrderAttribution
from spoor.storage.segment_tables import Campaign, CampaignDelivery
from tests.support import grafana_sql
from tests.support.local_stack import REPO
from tests.support.segments_data import put_events

pytestmark = pytest.mark.integration

DASHBOARD = grafana_sql.DASHBOARDS / "spoor-business.json"
START, END = datetime(2026, 3, 2, tzinfo=timezone.utc), datetime(2026, 3, 4, 23, 59, 59, tzinfo=timezone.utc)
BEFORE = datetime(2026, 2, 20, 9, tzinfo=timezone.utc)  # outside the range: must not show
NEW_PANELS = {"Page-type transitions (paths)", "Exits by page type", "Average dwell per page type (per day)",
              "Products by dwell (product pages)", "Page depth per session (day of the session's start)",
              "Search terms", "Repeat purchases by cohort month (last 12 cohorts)",
              "Net revenue by channel and attribution model", "Net revenue by channel per day (model: $model)",
              "Campaign variants against the holdout (95% intervals)"}


def panel_sql() -> dict[str, str]:
    return {p["title"]: p["targets"][0]["rawSql"] for p in grafana_sql.panels(DASHBOARD) if p.get("targets")
            and p["datasource"]["type"] == "grafana-postgresql-datasource"}


def run(engine, title: str, **values) -> tuple[list[str], list[tuple]]:
    sql = grafana_sql.expand(panel_sql()[title], START, END, values)
    with engine.connect() as conn:
        result = conn.execute(text(sql))
        return list(result.keys()), [tuple(r) for r in result]


def epoch(at: datetime) -> float:
    return at.timestamp()


# --- journeys -------------------------------------------------------------------------------------------

def journey(user: str, start: datetime, steps: list[tuple], beyond: int = 0) -> dict:
    """steps: (seconds after start, page type, product, dwell, dwell source, search term, result count, cart add)."""
    searched = any(s[1] == "search" for s in steps)
    return {"user_key": user, "session_id": f"{user}-s", "opened_at": start + timedelta(seconds=steps[0][0]),
            "events": len(steps), "page_depth": len(steps) + beyond,
            "steps_beyond": beyond, "step_times": [epoch(start + timedelta(seconds=s[0])) for s in steps],
            "page_type": [s[1] for s in steps], "product_id": [s[2] for s in steps],
            "dwell_s": [s[3] for s in steps], "dwell_source": [s[4] for s in steps],
            "search_term": [s[5] for s in steps], "result_count": [s[6] for s in steps],
            "cart_add_after": [s[7] if searched else None for s in steps]}


S1, S2, S3, S5 = (datetime(2026, 3, 2, 10, tzinfo=timezone.utc), datetime(2026, 3, 3, 12, tzinfo=timezone.utc),
                  datetime(2026, 3, 3, 15, tzinfo=timezone.utc), datetime(2026, 3, 4, 8, tzinfo=timezone.utc))
JOURNEYS = [
    journey("j1", S1, [(0, "home", None, 10.0, "next", None, None, None),
                       (10, "listing", None, 20.0, "next", None, None, None),
                       (30, "product", "p1", 45.5, "visible", None, None, None),
                       (80, "cart", None, None, None, None, None, None)]),
    journey("j2", S2, [(0, "home", None, 5.0, "next", None, None, False),
                       (5, "search", None, 7.0, "next", "shoes", 0, False),
                       (12, "search", None, 3.0, "next", "boots", 12, True),
                       (15, "product", "p1", 30.0, "next", None, None, True),
                       (45, "cart", None, 12.0, "visible", None, None, False)]),
    journey("j3", S3, [(0, "product", "p2", None, None, None, None, None)]),
    journey("j5", S5, [(0, "listing", None, 4.0, "next", None, None, None),  # average 13 s, median 5 s
                       (4, "listing", None, 5.0, "next", None, None, None),
                       (9, "listing", None, 30.0, "visible", None, None, None)]),
    journey("j4", BEFORE, [(0, "home", None, 2.0, "next", None, None, False),  # outside the range
                           (2, "search", None, 4.0, "next", "boots", 3, False),
                           (6, "product", "p1", 1000.0, "visible", None, None, False)]),
]


@pytest.fixture(scope="module")
def journeys(engine):
    # A session's row holds its journey (migration 0033); the views read it through session_journeys.
    journey_columns = [c for c in JOURNEYS[0] if c not in ("user_key", "session_id", "opened_at", "events")]
    with engine.begin() as conn:
        conn.execute(text(f"""
            INSERT INTO sessions (user_key, session_id, opened_at, client_session, started_at, ended_at, duration_s,
                                  events, page_views, product_views, cart_adds, checkouts, purchases, revenue,
                                  reached_cart, reached_checkout, reached_purchase, view_categories, cart_categories,
                                  purchase_categories, {', '.join(journey_columns)})
            VALUES (:user_key, :session_id, :opened_at, true, to_timestamp(:start), to_timestamp(:start), 0,
                    :events, :events, 0, 0, 0, 0, 0, false, false, false, '{{}}', '{{}}', '{{}}',
                    {', '.join(':' + c for c in journey_columns)})"""),
            [{**j, "start": j["step_times"][0]} for j in JOURNEYS])


def test_transitions_are_counted_over_the_range_with_each_step_share(engine, journeys):
    columns, rows = run(engine, "Page-type transitions (paths)")
    assert columns == ["from_type", "to_type", "transitions", "share_of_from"]
    assert {r[:3]: r[3] for r in rows} == {
        ("product", "cart", 2): Decimal("0.6667"), ("cart", "exit", 2): Decimal("1.0000"),
        ("home", "listing", 1): Decimal("0.5000"), ("home", "search", 1): Decimal("0.5000"),
        ("listing", "product", 1): Decimal("0.2500"), ("listing", "listing", 2): Decimal("0.5000"),
        ("listing", "exit", 1): Decimal("0.2500"), ("product", "exit", 1): Decimal("0.3333"),
        ("search", "product", 1): Decimal("0.5000"), ("search", "search", 1): Decimal("0.5000")}
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)  # most taken first


def test_exits_per_page_type(engine, journeys):
    columns, rows = run(engine, "Exits by page type")
    assert columns == ["page_type", "views", "sessions", "exits", "exit_share"]
    assert rows == [("cart", 2, 2, 2, Decimal("1.0000")), ("listing", 4, 2, 1, Decimal("0.5000")),
                    ("product", 3, 3, 1, Decimal("0.3333")), ("home", 2, 2, 0, Decimal("0.0000")),
                    ("search", 2, 1, 0, Decimal("0.0000"))]


def test_dwell_per_page_type_per_day_and_per_product(engine, journeys):
    columns, rows = run(engine, "Average dwell per page type (per day)")
    assert columns == ["time", "metric", "value"]
    day1, day2, day3 = (datetime(2026, 3, d, tzinfo=timezone.utc) for d in (2, 3, 4))
    assert [(t, m, float(v)) for t, m, v in rows] == [
        (day1, "home", 10.0), (day1, "listing", 20.0), (day1, "product", 45.5),  # j1's cart: no dwell known
        (day2, "cart", 12.0), (day2, "home", 5.0), (day2, "product", 30.0), (day2, "search", 5.0),
        (day3, "listing", 13.0)]
    columns, rows = run(engine, "Products by dwell (product pages)")
    assert columns == ["product_id", "views", "timed", "avg_dwell_s", "median_dwell_s", "exits"]
    assert rows == [("p1", 2, 2, Decimal("37.750"), 37.75, 0), ("p2", 1, 0, None, None, 1)]  # not j4's 1000 s


def test_page_depth_per_day_of_the_session_start(engine, journeys):
    columns, rows = run(engine, "Page depth per session (day of the session's start)")
    assert columns == ["time", "average pages", "median pages"]
    assert [(t.date(), float(a), m) for t, a, m in rows] == [(date(2026, 3, 2), 4.0, 4.0), (date(2026, 3, 3), 3.0, 3.0),
                                                              (date(2026, 3, 4), 3.0, 3.0)]


def test_search_terms(engine, journeys):
    columns, rows = run(engine, "Search terms")
    assert columns == ["term", "searches", "zero_result_searches", "zero_result_share", "followed_by_cart_add",
                       "cart_add_share"]
    assert rows == [("boots", 1, 0, Decimal("0.0000"), 1, Decimal("1.0000")),  # j4's boots search is before
                    ("shoes", 1, 1, Decimal("1.0000"), 0, Decimal("0.0000"))]


# --- repeat purchases -----------------------------------------------------------------------------------

def test_repeat_purchase_cohorts(engine, campaign):
    put_events(engine, [
        {"event_id": f"r-{user}-{n}", "user_key": user, "kind": "purchase", "name": "Order Completed",
         "order_id": f"r-{user}-{n}", "revenue": 10, "event_time": at}
        for user, times in {"r1": ["2025-12-05", "2025-12-20"], "r2": ["2025-12-10", "2026-01-25"],
                            "r3": ["2025-12-11"], "r4": ["2025-12-30", "2026-03-20"]}.items()
        for n, at in enumerate(datetime.fromisoformat(t + "T12:00:00+00:00") for t in times)])
    columns, rows = run(engine, "Repeat purchases by cohort month (last 12 cohorts)")
    assert columns == ["cohort_month", "customers", "repeat_rate_30d", "repeat_rate_60d", "repeat_rate_90d"]
    december = [r for r in rows if r[0] == date(2025, 12, 1)]
    # r1 again in 15 days, r2 in 46, r4 in 80, r3 never
    assert december == [(date(2025, 12, 1), 4, Decimal("0.2500"), Decimal("0.5000"), Decimal("0.7500"))]
    # March: the campaign's buyers, counted here from the seeded rows (an order once per order id, else event)
    orders: dict[str, dict[str, datetime]] = {}
    for r in campaign["purchases"]:
        if r["kind"] == "purchase":
            mine, key = orders.setdefault(r["user_key"], {}), r["order_id"] or r["event_id"]
            mine[key] = min(r["event_time"], mine.get(key, r["event_time"]))
    gaps = [sorted(times.values()) for times in orders.values()]
    gaps = [t[1] - t[0] if len(t) > 1 else None for t in gaps]
    repeated = [sum(1 for g in gaps if g is not None and g <= timedelta(days=d)) for d in (30, 60, 90)]
    assert 0 < repeated[0] < len(gaps)  # the seeded late orders make some repeat customers
    march = [r for r in rows if r[0] == date(2026, 3, 1)]
    assert march == [(date(2026, 3, 1), len(gaps), *[round(Decimal(n) / len(gaps), 4) for n in repeated])]
    assert [r[0] for r in rows] == [date(2026, 3, 1), date(2025, 12, 1)]  # newest first


# --- channel attribution --------------------------------------------------------------------------------

def shares(conversion: str, user: str, kind: str, at: datetime, per_model: dict) -> list[dict]:
    return [{"user_key": user, "conversion_id": conversion, "model": model, "touch": n, "kind": kind,
             "order_id": conversion.removeprefix("refund-"), "converted_at": at, "currency": "EUR",
             "session_id": f"{user}-{n}", "channel": channel, "amount": Decimal(amount)}
            for model, touches in per_model.items() for n, (channel, amount) in enumerate(touches, 1)]


G, D, N = "google / cpc", "direct", "newsletter / email"
ORDER_AT, REFUND_AT = datetime(2026, 3, 2, 9, tzinfo=timezone.utc), datetime(2026, 3, 3, 9, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def attribution(engine):
    rows = (shares("c1", "a1", "order", ORDER_AT, {  # three touches: google, direct, newsletter
                "first_touch": [(G, "100")], "last_touch": [(N, "100")],
                "linear": [(G, "33.33"), (D, "33.33"), (N, "33.34")],
                "position_based": [(G, "40"), (D, "20"), (N, "40")]})
            + shares("refund-c1", "a1", "refund", REFUND_AT, {
                "first_touch": [(G, "-20")], "last_touch": [(N, "-20")],
                "linear": [(G, "-6.67"), (D, "-6.67"), (N, "-6.66")],
                "position_based": [(G, "-8"), (D, "-4"), (N, "-8")]})
            + shares("c2", "a2", "order", REFUND_AT, {m: [(D, "50")] for m in
                                                     ("first_touch", "last_touch", "linear", "position_based")})
            + shares("c3", "a3", "order", BEFORE, {m: [(G, "999")] for m in
                                                  ("first_touch", "last_touch", "linear", "position_based")}))
    with engine.begin() as conn:
        conn.execute(insert(OrderAttribution.__table__), rows)


def test_net_revenue_by_channel_and_model(engine, attribution):
    columns, rows = run(engine, "Net revenue by channel and attribution model")
    assert columns == ["channel", "currency", "first_touch", "last_touch", "linear", "position_based"]
    assert rows == [(N, "EUR", 0, 80, Decimal("26.68"), 32), (D, "EUR", 50, 50, Decimal("76.66"), 66),
                    (G, "EUR", 80, 0, Decimal("26.66"), 32)]  # c3 (999, before the range) is left out
    assert {sum(r[i] for r in rows) for i in range(2, 6)} == {130}  # every model shares the same net takings


def test_net_revenue_per_day_follows_the_model_variable(engine, attribution):
    day1, day2 = datetime(2026, 3, 2, tzinfo=timezone.utc), datetime(2026, 3, 3, tzinfo=timezone.utc)
    assert grafana_sql.variables(DASHBOARD)["model"] == ["first_touch", "last_touch", "linear", "position_based"]
    columns, rows = run(engine, "Net revenue by channel per day (model: $model)", model="last_touch")
    assert columns == ["time", "metric", "value"]
    assert rows == [(day1, f"{N} (EUR)", 100), (day2, f"{D} (EUR)", 50), (day2, f"{N} (EUR)", -20)]
    _, rows = run(engine, "Net revenue by channel per day (model: $model)", model="position_based")
    assert rows == [(day1, f"{D} (EUR)", 20), (day1, f"{G} (EUR)", 40), (day1, f"{N} (EUR)", 40),
                    (day2, f"{D} (EUR)", 46), (day2, f"{G} (EUR)", -8), (day2, f"{N} (EUR)", -8)]


# --- campaign experiments -------------------------------------------------------------------------------

TRIGGERED = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)
DEFINITION = {"name": "dash_ab", "audience": {"trigger": "cart_abandonment"}, "action": {"kafka_topic": "dash-out"},
              "holdout_percent": 20, "conversion_window_days": 5, "cost_per_message": 0.1, "fixed_cost": 30,
              "variants": [{"name": "reminder", "weight": 1},
                           {"name": "discount", "weight": 1, "cost_per_message": 0.3}]}
OLD = {"name": "old_one", "audience": {"trigger": "cart_abandonment"}, "action": {"kafka_topic": "dash-out"},
       "holdout_percent": 50}


def delivery(campaign: str, user: str, episode: str, at: datetime, status: str, variant: str | None) -> dict:
    return {"campaign": campaign, "user_key": user, "episode": episode,
            "idempotency_key": f"{campaign}:{user}:{episode}", "triggered_at": at, "due_at": at,
            "next_attempt_at": at, "status": status, "variant": variant,
            "attempts": 1 if status == "sent" else 0, "sent_at": at if status == "sent" else None}


@pytest.fixture(scope="module")
def campaign(engine):
    """400 users: a fifth in the holdout, the rest split between two variants (some rows from before
    variants: none, i.e. the first), some capped (no message: still in their arm), one opted out, 40 with a
    second episode; purchases inside and outside the 5-day windows, resent orders, refunds and a whale."""
    rng = random.Random(29)
    deliveries, purchases = [], []
    for i in range(400):
        user = f"d-{i}"
        arm = "holdout" if i % 5 == 0 else ("reminder", "discount")[i % 2]
        status = ("opted_out" if i == 1 else "holdout" if arm == "holdout" else "capped" if i % 17 == 0 else "sent")
        variant = None if arm == "holdout" or status == "opted_out" or (arm == "reminder" and i % 23 == 0) else arm
        deliveries.append(delivery("dash_ab", user, "1", TRIGGERED, status, variant))
        if i % 10 == 3:
            deliveries.append(delivery("dash_ab", user, "2", TRIGGERED + timedelta(days=3), status, variant))
        if rng.random() < {"holdout": 0.12, "reminder": 0.2, "discount": 0.3}[arm]:
            value = round(rng.lognormvariate(3.5, 1.0), 2)
            at = TRIGGERED + timedelta(days=rng.uniform(0.01, 4.9))
            purchases.append({"event_id": f"buy-{user}", "user_key": user, "kind": "purchase", "order_id": f"o-{user}",
                              "revenue": value, "event_time": at})
            if i % 7 == 0:  # the same order sent again: once
                purchases.append({**purchases[-1], "event_id": f"buy-{user}-again", "event_time": at})
            if i % 11 == 0:
                purchases.append({"event_id": f"refund-{user}", "user_key": user, "kind": "refund",
                                  "order_id": f"o-{user}", "revenue": round(value / 3, 2),
                                  "event_time": TRIGGERED + timedelta(days=9)})
        if i % 13 == 0:  # after the window (unless the second episode covers it)
            purchases.append({"event_id": f"late-{user}", "user_key": user, "kind": "purchase", "order_id": None,
                              "revenue": 40.0, "event_time": TRIGGERED + timedelta(days=6)})
    purchases.append({"event_id": "whale", "user_key": "d-6", "kind": "purchase", "order_id": "whale",
                      "revenue": 30_000.0, "event_time": TRIGGERED + timedelta(days=1)})
    with engine.begin() as conn:
        for definition in (DEFINITION, OLD):
            conn.execute(insert(Campaign.__table__).values(
                name=definition["name"], definition=parse_campaign(definition).model_dump(mode="json"),
                status="active", launched_at=BEFORE))
        conn.execute(insert(CampaignDelivery.__table__), deliveries + [  # old_one: only before the range
            delivery("old_one", f"d-{i}", "1", BEFORE, "holdout" if i % 2 else "sent", None) for i in range(10)])
    put_events(engine, [{"name": "Order Completed" if r["kind"] == "purchase" else "Order Refunded", **r}
                        for r in purchases])
    return {"purchases": purchases}


def same(got: list, expected: list, rel: float) -> None:
    """Equal within ``rel``, a missing value (None) missing in both."""
    assert [g is None for g in got] == [e is None for e in expected], (got, expected)
    assert [g for g in got if g is not None] == pytest.approx([e for e in expected if e is not None], rel=rel)


def assert_equal_to_report(engine, name: str, shown: list[dict]) -> dict:
    """The view's rows of one campaign (holdout first) against ``spoor campaigns report``'s experiment."""
    report = campaign_dispatch.report(engine, name)["experiment"]
    holdout, *variants = shown
    assert holdout["arm"] == "holdout" and holdout["users"] == report["holdout"]["users"]
    assert holdout["converted"] == report["holdout"]["converted"]
    same([holdout["revenue_per_user"]], [report["holdout"]["revenue_per_user"]], 1e-12)
    assert holdout["conversion_lift"] is None and holdout["cost"] is None and holdout["roi"] is None
    for row, expected in zip(variants, report["variants"], strict=True):
        conversion, revenue = expected["conversion"], expected["revenue_per_user_lift"]
        assert row["arm"] == expected["name"]
        assert (row["users"], row["messages_sent"], row["converted"]) == (
            expected["users"], expected["messages_sent"], expected["converted"])
        same([row["conversion_rate"], row["revenue_per_user"]],
             [expected["conversion_rate"], expected["revenue_per_user"]], 1e-12)
        same([row["conversion_lift"], row["conversion_lift_low"], row["conversion_lift_high"]],
             [conversion["absolute_lift"], *(conversion["absolute_lift_ci"] or [None, None])], 1e-12)
        same([row["revenue_per_user_lift"], row["revenue_per_user_lift_low"], row["revenue_per_user_lift_high"]],
             [revenue["absolute_lift"], *(revenue["absolute_lift_ci"] or [None, None])], 1e-9)
        assert float(row["cost"]) == pytest.approx(expected["cost"], abs=1e-4)
        same([row["incremental_revenue"], row["roi"], row["roi_low"], row["roi_high"]],
             [expected["incremental_revenue"], expected["roi"], *(expected["roi_ci"] or [None, None])], 1e-9)
    return report


def test_campaign_variants_equal_the_report(engine, campaign):
    columns, rows = run(engine, "Campaign variants against the holdout (95% intervals)")
    assert columns == ["campaign", "arm", "users", "messages_sent", "converted", "conversion_rate", "conversion_lift",
                       "conversion_lift_low", "conversion_lift_high", "revenue_per_user", "revenue_per_user_lift",
                       "revenue_per_user_lift_low", "revenue_per_user_lift_high", "cost", "incremental_revenue",
                       "roi", "roi_low", "roi_high"]
    shown = [dict(zip(columns, r)) for r in rows]
    assert [(r["campaign"], r["arm"]) for r in shown] == [("dash_ab", "holdout"), ("dash_ab", "reminder"),
                                                           ("dash_ab", "discount")]  # old_one: before the range
    assert (shown[0]["users"], shown[0]["messages_sent"]) == (80, 0)
    assert sum(r["users"] for r in shown[1:]) == 319  # 400 less 80 in the holdout, less one opted out
    report = assert_equal_to_report(engine, "dash_ab", shown)
    for variant in report["variants"]:
        assert variant["revenue_per_user_lift"]["winsorised_to"][1] < 30_000  # the whale is clipped
        assert variant["roi"] is not None and variant["revenue_per_user_lift"]["absolute_lift_ci"] is not None
    assert report["variants"][1]["conversion"]["absolute_lift_ci"][0] > 0  # the seeded effect shows


def test_a_campaign_without_variants_or_buyers(engine, campaign):
    """old_one: the implicit variant ``default``, no cost, no purchase in its windows (no revenue interval)."""
    with engine.connect() as conn:
        result = conn.execute(text("SELECT * FROM campaign_variant_results WHERE campaign = 'old_one' "
                                   "ORDER BY position"))
        shown = [dict(r._mapping) for r in result]
    assert [(r["arm"], r["users"], r["messages_sent"]) for r in shown] == [("holdout", 5, 0), ("default", 5, 5)]
    assert shown[1]["revenue_per_user_lift"] is None and shown[1]["cost"] == 0 and shown[1]["roi"] is None
    assert_equal_to_report(engine, "old_one", shown)


def test_the_views_t_quantile_is_within_its_stated_error(engine):
    """PostgreSQL has no Student's t: the view's Cornish-Fisher quantile against scipy's."""
    import importlib.util

    from scipy import stats
    path = REPO / "storage/migrations/versions/0029_campaign_variant_results.py"
    spec = importlib.util.spec_from_file_location("migration_0029", path)
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    dfs = [10, 12.5, 20, 37.2, 100, 1e4]
    with engine.connect() as conn:
        got = conn.execute(text(f"SELECT {migration.T_QUANTILE} FROM unnest(CAST(:dfs AS float8[])) AS df"),
                           {"dfs": dfs}).scalars().all()
    for df, quantile in zip(dfs, got, strict=True):
        exact = stats.t.ppf(0.975, df)
        assert abs(quantile / exact - 1) < (4e-6 if df < 20 else 1.2e-7), (df, quantile, exact)


def test_every_postgres_panel_of_the_business_dashboard_is_checked():
    """A new panel on these views gets a test here; each panel's macros all expand (none left over)."""
    sql = panel_sql()
    assert NEW_PANELS <= set(sql)
    variables = {name: values[0] for name, values in grafana_sql.variables(DASHBOARD).items()}
    for title, query in sql.items():
        grafana_sql.expand(query, START, END, variables)
    on_new_views = {t for t, q in sql.items() if any(v in q for v in (
        "journey_", "page_dwell", "search_terms", "repeat_purchase", "attribution_", "campaign_variant"))}
    assert on_new_views == NEW_PANELS
