"""Journeys (docs/analytics.md#journeys) through the collector, Kafka, Faust and PostgreSQL, against pandas.

Two inputs: the REES46 sample (real sessions: view -> product, cart / remove_from_cart -> cart,
purchase -> purchase, one step per row), replayed with ``spoor replay``; and simulated shoppers whose
journeys are generated here (page calls, product views, cart adds, searches, engagement reports,
orders). The expected steps, dwell times, paths, exits, depth, search terms and repeat-purchase
cohorts are computed from the raw file and the generated messages with pandas, with none of Spoor's
code, and must equal the views exactly.
"""

import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd
import pytest
from sqlalchemy import text

from spoor.cli.collector_client import CollectorClient
from tests.support.local_stack import REPO, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REES46 = REPO.parent / "shared" / "data" / "rees46_2019-10_sample_1000.csv"
CAP_S = 1800.0  # journeys.DWELL_CAP_S, as documented
REES46_TYPES = {"view": "product", "cart": "cart", "remove_from_cart": "cart", "purchase": "purchase"}
B = datetime(2026, 2, 27, 8, 0, tzinfo=timezone.utc)

# The simulated shop's pages: (what is sent, page type as docs/analytics.md's table says).
PAGES = [("Home", "home"), ("Category", "listing"), ("Search Results", "search"), ("Product", "product"),
         ("Cart", "cart"), ("Checkout", "checkout"), ("Thank You", "purchase"), ("Our story", "other")]
TERMS = ["Red Boots", "  red   boots ", "SOCKS", "scarf", "x" * 300]


def iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- the simulated shoppers -----------------------------------------------------------------------

# Customers' orders, days after their first (a second order within 30/60/90 days or not); each first
# order is sent twice under one order id (it counts once).
REPEATS = [[0, 10], [0, 45], [0, 80], [0, 120], [0], [0, 29.9, 31], [0, 0.5], [0, 91, 92]]


def simulate(seed: int = 23) -> tuple[list[dict], list[dict], set]:
    """(messages, the steps they make as the docs define them, every session's (user key, session id))."""
    rng = random.Random(seed)
    messages, steps, sessions = [], [], set()
    for u in range(60):
        user, at = f"sim-{u}", B + timedelta(milliseconds=rng.randint(0, 4 * 86_400_000))
        for s in range(rng.randint(1, 3)):
            session = f"{user}-s{s}"
            sessions.add((user, session))
            for n in range(rng.randint(1, 14)):
                at += timedelta(milliseconds=rng.randint(1_000, 2_400_000))  # some gaps beyond the cap
                url = f"https://shop.example/{session}/{n}"
                base = {"userId": user, "messageId": f"{session}-{n}", "timestamp": iso(at),
                        "context": {"sessionId": session, "page": {"url": url}}}
                roll = rng.random()
                step = {"user_key": user, "session_id": session, "at": at, "product_id": None, "term": None,
                        "results": None, "added": False, "visible": None}
                if roll < 0.35:
                    name, kind = rng.choice(PAGES)
                    messages.append({**base, "type": "page", "name": name})
                    step["page_type"] = kind
                elif roll < 0.55:
                    product = f"p{rng.randint(1, 8)}"
                    messages.append({**base, "type": "track", "event": "Product Viewed",
                                     "properties": {"product_id": product, "price": 10}})
                    step.update(page_type="product", product_id=product)
                elif roll < 0.68:
                    product = f"p{rng.randint(1, 8)}"
                    messages.append({**base, "type": "track", "event": "Product Added",
                                     "properties": {"product_id": product, "price": 10, "quantity": 1}})
                    step.update(page_type="cart", product_id=product, added=True)
                elif roll < 0.83:
                    term = rng.choice(TERMS)
                    props = {"query": term}
                    if rng.random() < 0.7:
                        props["result_count"] = rng.choice([0, 0, 3, 12])
                    messages.append({**base, "type": "track", "event": "Products Searched", "properties": props})
                    step.update(page_type="search", term=" ".join(term[:256].split()).casefold()[:100],
                                results=props.get("result_count"))
                elif roll < 0.88:
                    messages.append({**base, "type": "track", "event": "Checkout Started"})
                    step["page_type"] = "checkout"
                elif roll < 0.92:
                    messages.append({**base, "type": "track", "event": "Order Completed",
                                     "properties": {"order_id": f"o-{session}-{n}", "revenue": 25}})
                    step["page_type"] = "purchase"
                else:
                    messages.append({**base, "type": "track", "event": "Product Clicked"})  # no step
                    continue
                steps.append(step)
                if rng.random() < 0.4:  # the page is hidden: its visible time so far, once or twice
                    for _ in range(rng.randint(1, 2)):
                        at += timedelta(milliseconds=rng.randint(1, 500))
                        visible = rng.choice([rng.randint(0, 120_000), rng.randint(1_800_001, 10**9)])
                        messages.append({"userId": user, "messageId": f"{session}-{n}-e{visible}",
                                         "timestamp": iso(at), "type": "track", "event": "Page Engagement",
                                         "properties": {"visible_ms": visible}, "context": base["context"]})
                        step["visible"] = max(step["visible"] or 0, visible)
            at += timedelta(milliseconds=rng.randint(3_600_000, 30 * 3_600_000))
    for r, offsets in enumerate(REPEATS):
        user, first = f"repeat-{r}", datetime(2025, 10 + r % 3, 3 + r, 12, tzinfo=timezone.utc)
        for i, days in enumerate(offsets):
            at = first + timedelta(days=days)
            copies = [(at, f"{user}-o{i}")] + ([(at + timedelta(seconds=1), f"{user}-o{i}-again")] if i == 0 else [])
            for when, message_id in copies:
                messages.append({"userId": user, "messageId": message_id, "timestamp": iso(when), "type": "track",
                                 "event": "Order Completed", "properties": {"order_id": f"{user}-o{i}", "revenue": 5}})
            session = f"t{round(at.timestamp() * 1000)}"  # alone in its inactivity session
            sessions.add((user, session))
            steps.append({"user_key": user, "session_id": session, "at": at, "page_type": "purchase",
                          "product_id": None, "term": None, "results": None, "added": False, "visible": None})
    return messages, steps, sessions


def simulated_steps(steps: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(steps)
    df["at_ms"] = [round(t.timestamp() * 1000) for t in df["at"]]
    return df


def rees46_steps() -> pd.DataFrame:
    raw = pd.read_csv(REES46, dtype=str, keep_default_na=False)
    at = pd.to_datetime(raw["event_time"].str.removesuffix(" UTC")).dt.tz_localize("UTC")
    return pd.DataFrame({
        "user_key": raw["user_id"], "session_id": raw["user_session"], "at": at,
        "at_ms": [round(t.timestamp() * 1000) for t in at], "page_type": raw["event_type"].map(REES46_TYPES),
        "product_id": raw["product_id"].where(raw["event_type"] != "purchase", None),  # an order's: in its lines
        "term": None, "results": None, "added": raw["event_type"] == "cart",
        "visible": None})


def with_dwell(df: pd.DataFrame) -> pd.DataFrame:
    """Steps in session order (by time, ties in sending order), their dwell, exits and search follow-ups."""
    df = df.reset_index(drop=True)
    df["order"] = range(len(df))
    df = df.sort_values(["user_key", "session_id", "at_ms", "order"], kind="stable").reset_index(drop=True)
    group = df.groupby(["user_key", "session_id"], sort=False)
    df["step"] = group.cumcount() + 1
    next_ms = group["at_ms"].shift(-1)
    df["last_step"] = next_ms.isna()
    df["next_type"] = group["page_type"].shift(-1)
    gap = [None if pd.isna(n) else min((n - a) / 1000, CAP_S) for n, a in zip(next_ms, df["at_ms"])]
    df["dwell_s"] = [min(v / 1000, CAP_S) if v is not None and not pd.isna(v) else g
                     for v, g in zip(df["visible"], gap)]
    df["dwell_source"] = ["visible" if v is not None and not pd.isna(v) else ("next" if g is not None else None)
                          for v, g in zip(df["visible"], gap)]
    adds_after = group["added"].transform(lambda a: a[::-1].cumsum()[::-1] - a)
    df["cart_add_after"] = [bool(n > 0) if t == "search" else None for t, n in zip(df["page_type"], adds_after)]
    df["day"] = [t.date() for t in df["at"]]
    return df


def rounded(part, whole, places: int = 3) -> Decimal:
    """part / whole as PostgreSQL's round(numeric, places) gives it (floats as their 15 significant digits)."""
    exact = Decimal(f"{part:.15g}") / Decimal(f"{whole:.15g}")
    return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


# ---- the pipeline -------------------------------------------------------------------------------------

def query(engine, sql: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame([dict(r._mapping) for r in conn.execute(text(sql))])


@pytest.fixture(scope="module")
def loaded(collector, write_key, engine, start_process):
    start_process("worker")
    run = subprocess.run([sys.executable, "-m", "spoor.cli", "replay", str(REES46), "--collector-url", collector,
                          "--write-key", write_key], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    messages, steps, simulated_sessions = simulate()
    client = CollectorClient(collector, write_key)
    for start in range(0, len(messages), 200):
        status, body = client.send_batch(messages[start:start + 200])
        assert status == 200, body
    assert client.send_batch(messages[:200])[0] == 200  # a client's retry changes nothing
    client.close()
    expected = with_dwell(pd.concat([rees46_steps(), simulated_steps(steps)], ignore_index=True))
    raw = pd.read_csv(REES46, dtype=str, keep_default_na=False)
    sessions = set(zip(raw["user_id"], raw["user_session"])) | simulated_sessions

    def done() -> bool:
        events = query(engine, "SELECT count(*) AS n FROM events")["n"][0]
        stored = query(engine, "SELECT count(*) AS n, coalesce(sum(page_depth), 0) AS depth FROM session_journeys")
        return (events == 1000 + len(messages) and stored["n"][0] == len(sessions)
                and stored["depth"][0] == len(expected))
    wait_until(done, 300, "the journeys in PostgreSQL", interval=1)
    return expected, messages, sessions


def test_every_step_matches_the_independent_computation(loaded, engine):
    expected, _, _ = loaded
    actual = query(engine, "SELECT * FROM journey_steps").set_index(["user_key", "session_id", "step"]).sort_index()
    want = expected.set_index(["user_key", "session_id", "step"]).sort_index()
    assert list(actual.index) == list(want.index)
    for column, source in (("page_type", "page_type"), ("product_id", "product_id"), ("dwell_s", "dwell_s"),
                           ("dwell_source", "dwell_source"), ("last_step", "last_step"),
                           ("search_term", "term"), ("result_count", "results"), ("cart_add_after", "cart_add_after")):
        mismatched = [(key, got, w) for key, got, w in zip(want.index, actual[column], want[source])
                      if not (got == w or (pd.isna(got) and (w is None or pd.isna(w))))]
        assert not mismatched, f"{column}: {len(mismatched)} steps differ, e.g. {mismatched[:5]}"
    assert [round(t.timestamp() * 1000) for t in actual["at"]] == list(want["at_ms"])
    # The data exercise every rule: both dwell sources, the cap, last steps, searches with and without carts.
    assert {"visible", "next"} <= set(actual["dwell_source"].dropna())
    assert (actual["dwell_s"] == CAP_S).sum() > 5 and actual["last_step"].sum() == want["last_step"].sum()
    assert set(actual["cart_add_after"].dropna()) == {True, False}


def test_transitions_and_exits_per_day_match(loaded, engine):
    expected, _, _ = loaded
    moves = expected[expected["last_step"] | expected["next_type"].notna()].copy()
    moves["to_type"] = ["exit" if last else nxt for last, nxt in zip(moves["last_step"], moves["next_type"])]
    want = moves.groupby(["day", "page_type", "to_type"]).size().rename("transitions").reset_index()
    want = want.rename(columns={"page_type": "from_type"}).sort_values(["day", "from_type", "to_type"])
    actual = query(engine, "SELECT * FROM journey_transitions_daily").sort_values(["day", "from_type", "to_type"])
    assert actual.to_dict("records") == want.to_dict("records")
    assert {"product", "cart", "purchase"} <= set(want["from_type"]) and "exit" in set(want["to_type"])

    expected["session"] = list(zip(expected["user_key"], expected["session_id"]))
    exits = expected.groupby(["day", "page_type"]).agg(views=("step", "size"), sessions=("session", "nunique"),
                                                       exits=("last_step", "sum")).reset_index()
    actual = query(engine, "SELECT * FROM journey_exits_daily").sort_values(["day", "page_type"])
    exits = exits.sort_values(["day", "page_type"])
    assert actual[["day", "page_type", "views", "sessions", "exits"]].to_dict("records") == exits.to_dict("records")
    assert list(actual["exit_share"]) == [rounded(e, s, 4) for e, s in zip(exits["exits"], exits["sessions"])]

    sankey = query(engine, "SELECT * FROM journey_sankey_daily")
    first = moves[moves["step"] <= 6]
    assert sankey["sessions"].sum() == len(first)
    assert not set(sankey["source"]) & {"exit"} and all(s.split(". ")[1] in {
        "home", "listing", "search", "product", "cart", "checkout", "purchase", "other"} for s in sankey["source"])


def test_dwell_per_page_type_and_product_and_depth_match(loaded, engine):
    expected, _, _ = loaded
    for view, key, rows in (("page_dwell_daily", "page_type", expected),
                            ("product_dwell_daily", "product_id",
                             expected[(expected["page_type"] == "product") & expected["product_id"].notna()])):
        actual = query(engine, f"SELECT * FROM {view}").set_index(["day", key]).sort_index()
        group = rows.groupby(["day", key])
        assert list(actual.index) == sorted(group.groups)
        assert list(actual["views"]) == [len(g) for _, g in sorted(group)]
        assert list(actual["timed"]) == [g["dwell_s"].notna().sum() for _, g in sorted(group)]
        assert list(actual["last_pages"]) == [g["last_step"].sum() for _, g in sorted(group)]
        assert list(actual["avg_dwell_s"]) == [None if g["dwell_s"].isna().all() else
                                               rounded(sum(Decimal(f"{d:.15g}") for d in g["dwell_s"].dropna()),
                                                       g["dwell_s"].notna().sum())
                                               for _, g in sorted(group)]
    _, _, all_sessions = loaded
    stored = query(engine, "SELECT * FROM sessions")
    depth = expected.groupby(["user_key", "session_id"]).size().reindex(sorted(all_sessions), fill_value=0)
    depth = depth.rename("depth").rename_axis(["user_key", "session_id"]).reset_index()
    depth = depth.merge(stored[["user_key", "session_id", "started_at"]], on=["user_key", "session_id"])
    assert len(depth) == len(all_sessions)
    depth["day"] = [t.astimezone(timezone.utc).date() for t in depth["started_at"]]
    want = depth.groupby("day").agg(sessions=("depth", "size"), total=("depth", "sum"),
                                    single=("depth", lambda d: (d == 1).sum()))
    actual = query(engine, "SELECT * FROM journey_depth_daily").set_index("day").sort_index()
    assert list(actual.index) == list(want.index)
    assert list(actual["sessions"]) == list(want["sessions"])
    assert list(actual["single_page_sessions"]) == list(want["single"])
    assert list(actual["avg_page_depth"]) == [rounded(t, s) for t, s in zip(want["total"], want["sessions"])]


def test_search_terms_per_day_match(loaded, engine):
    expected, _, _ = loaded
    searches = expected[expected["page_type"] == "search"].copy()
    searches["zero"] = searches["results"].map(lambda r: r == 0)
    searches["counted"] = searches["results"].notna()
    want = searches.groupby(["day", searches["term"].fillna("(none)")]).agg(
        searches=("step", "size"), zero_result_searches=("zero", "sum"), searches_with_count=("counted", "sum"),
        followed_by_cart_add=("cart_add_after", "sum")).reset_index()
    actual = query(engine, "SELECT * FROM search_terms_daily")
    actual["term"] = actual["term"].fillna("(none)")
    actual = actual.sort_values(["day", "term"]).reset_index(drop=True)
    want = want.sort_values(["day", "term"]).reset_index(drop=True)
    columns = ["day", "term", "searches", "zero_result_searches", "searches_with_count", "followed_by_cart_add"]
    assert actual[columns].to_dict("records") == want[columns].to_dict("records")
    assert list(actual["cart_add_share"]) == [rounded(f, s, 4) for f, s in
                                              zip(want["followed_by_cart_add"], want["searches"])]
    assert "red boots" in set(actual["term"]) and max(map(len, actual["term"])) == 100  # folded, cut
    assert want["zero_result_searches"].sum() > 0 and want["followed_by_cart_add"].sum() > 0


def test_repeat_purchase_cohorts_match(loaded, engine):
    _, messages, _ = loaded
    raw = pd.read_csv(REES46, dtype=str, keep_default_na=False)
    orders = [(u, f"rees46-{n}", pd.Timestamp(t.removesuffix(" UTC"), tz="UTC")) for n, (u, t, k) in
              enumerate(zip(raw["user_id"], raw["event_time"], raw["event_type"])) if k == "purchase"]
    orders += [(m["userId"], m["properties"]["order_id"], pd.Timestamp(m["timestamp"])) for m in messages
               if m.get("event") == "Order Completed"]
    df = pd.DataFrame(orders, columns=["user_key", "order_id", "at"])
    df = df.groupby(["user_key", "order_id"], as_index=False)["at"].min().sort_values(["user_key", "at"])  # once
    df["n"] = df.groupby("user_key").cumcount()
    first = df[df["n"] == 0].set_index("user_key")["at"]
    second = df[df["n"] == 1].set_index("user_key")["at"].reindex(first.index)
    cohorts = pd.DataFrame({"month": [t.date().replace(day=1) for t in first], "gap": second - first})
    want = cohorts.groupby("month").agg(customers=("gap", "size"),
                                        **{f"repeat_{d}d": ("gap", lambda g, d=d: (g <= pd.Timedelta(days=d)).sum())
                                           for d in (30, 60, 90)})
    actual = query(engine, "SELECT * FROM repeat_purchase_cohorts").set_index("cohort_month").sort_index()
    assert list(actual.index) == list(want.index)
    for column in ("customers", "repeat_30d", "repeat_60d", "repeat_90d"):
        assert list(actual[column]) == list(want[column]), column
    for days in (30, 60, 90):
        assert list(actual[f"repeat_rate_{days}d"]) == [rounded(r, c, 4) for r, c in
                                                       zip(want[f"repeat_{days}d"], want["customers"])]
    assert list(want["repeat_30d"]) != list(want["repeat_90d"])  # the windows differ on these customers
