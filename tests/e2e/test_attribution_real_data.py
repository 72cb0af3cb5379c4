"""Channel attribution on real shoppers' data: collector -> Kafka -> worker -> PostgreSQL -> the segments
runner's attribution pass (a real `spoor segments run`, attributing while the events arrive), against an
independent pandas computation over the same input.

Neither shared data set carries channels, so each is given them by a seeded rule (say so in any figure
quoted from here): a REES46 session (``user_session``) and an Online Retail invoice minute of a customer
get one of six channels (UTM source and medium, UTM source alone, a referrer, or none) from the SHA-256
of ``SEED`` and the key, sent as Segment's libraries send them (``context.campaign``, ``context.page``).
REES46 sessions are the client's ids; Online Retail invoices fall into sessions by the worker's 30-minute
inactivity rule, which the reference applies on its own (with the session ids ``t<start in ms>``).
Online Retail cancellations are refunds naming no order (their own ``C`` numbers): attributed at their
own time. Every stored row (person, conversion, model, touch, session, channel, amount) must equal the
reference's, and the shares of each conversion add up to its amount.
"""

import csv
import gzip
import hashlib
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import text

from spoor.cli.collector_client import CollectorClient
from spoor.cli.replay import Tally, online_retail_messages, rees46_messages
from spoor.topics import create_segment_topics
from tests.support.attribution_reference import KEY, as_set, attribution
from tests.support.local_stack import REPO, SpoorProcess, free_port, run_id, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DATA = REPO.parent / "shared" / "data"
ONLINE_RETAIL = DATA / "online_retail_2010-12_2011-06.csv.gz"
REES46 = DATA / "rees46_2019-10_sample_1000.csv"
SEED = "spoor-attribution-23"
WINDOW = timedelta(days=30)
INACTIVITY = pd.Timedelta(seconds=1800)
# (context.campaign, referrer)
CHANNELS = [({"source": "google", "medium": "cpc", "name": "brand"}, "https://www.google.com/"),
            ({"source": "newsletter", "medium": "email"}, None),
            ({"source": "facebook", "name": "spring"}, "https://m.facebook.com/"),
            (None, "https://www.Bing.com/search?q=gifts"),
            (None, "https://t.co/x1"),
            (None, None)]


def channel_of(key: str) -> tuple[dict | None, str | None]:
    return CHANNELS[int(hashlib.sha256(f"{SEED}:{key}".encode()).hexdigest(), 16) % len(CHANNELS)]


def with_channel(message: dict, key: str) -> dict:
    campaign, referrer = channel_of(key)
    context = dict(message.get("context") or {})
    context["page"] = {"url": "https://shop.example/", **({"referrer": referrer} if referrer else {})}
    if campaign:
        context["campaign"] = campaign
    return {**message, "context": context}


def user_of(message: dict) -> str:
    return message.get("userId") or message["anonymousId"]


def rees46_input() -> list[dict]:
    with open(REES46, newline="") as f:
        rows = list(enumerate(csv.DictReader(f), start=2))
    assert all(row["user_session"] for _, row in rows)
    return [with_channel(m, m["context"]["sessionId"]) for m in rees46_messages(rows, Tally())]


def online_retail_input() -> list[dict]:
    with gzip.open(ONLINE_RETAIL, "rt", newline="") as f:
        messages = online_retail_messages(enumerate(csv.DictReader(f), start=2), Tally())
    out = []
    for m in messages:
        m = {**m, "properties": {k: v for k, v in m["properties"].items() if k != "products"}}
        out.append(with_channel(m, f"{user_of(m)}|{m['timestamp'][:16]}"))
    return sorted(out, key=lambda m: m["timestamp"])  # the worker's lateness bound: in time order per user


# ---- the reference: sessions and conversions from the input, attribution in pandas ---------------

def frame(messages: list[dict]) -> pd.DataFrame:
    rows = []
    for m in messages:
        campaign = m["context"].get("campaign") or {}
        rows.append({"user_key": user_of(m), "event_id": m["messageId"], "event": m.get("event"),
                     "at": pd.Timestamp(m["timestamp"]), "client_session": m["context"].get("sessionId"),
                     "utm_source": campaign.get("source"), "utm_medium": campaign.get("medium"),
                     "referrer": m["context"]["page"].get("referrer"), "props": m["properties"]})
    return pd.DataFrame(rows)


def sessions_of(events: pd.DataFrame) -> pd.DataFrame:
    events = events.sort_values(["user_key", "at"], kind="stable").copy()
    client = events["client_session"].notna()
    gap = events.groupby("user_key")["at"].diff()
    new = gap.isna() | (gap > INACTIVITY)
    events["session_id"] = events["client_session"].where(client, None)
    events["n"] = new.cumsum()
    starts = events.groupby("n")["at"].transform("min")
    inactivity_id = "t" + ((starts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).astype(str)
    events["session_id"] = events["session_id"].where(client, inactivity_id)
    ordered = events.sort_values(["user_key", "session_id", "at"], kind="stable")
    # A session's entry (its referrer) is its earliest event; its UTM fields, its earliest event with UTM data.
    first = ordered.drop_duplicates(["user_key", "session_id"]).set_index(["user_key", "session_id"])
    first = first.rename(columns={"at": "started_at"})[["started_at", "referrer"]]
    with_utm = ordered[ordered["utm_source"].notna() | ordered["utm_medium"].notna()]
    utm = with_utm.drop_duplicates(["user_key", "session_id"]).set_index(["user_key", "session_id"])
    utm = utm[["utm_source", "utm_medium"]]
    return first.join(utm).reset_index()


def conversions_of(events: pd.DataFrame) -> pd.DataFrame:
    orders = events[events["event"].isin(["Order Completed", "Order Refunded"])]
    return pd.DataFrame({
        "user_key": orders["user_key"], "conversion_id": orders["event_id"],
        "kind": orders["event"].map({"Order Completed": "order", "Order Refunded": "refund"}),
        "order_id": [p.get("order_id") for p in orders["props"]], "at": orders["at"],
        "amount": [Decimal(str(p.get("revenue", p.get("total", 0)))) for p in orders["props"]]})


def reference(messages: list[dict]) -> set[tuple]:
    events = frame(messages)
    return as_set(attribution(sessions_of(events), conversions_of(events), pd.Timedelta(WINDOW)))


# ---- the pipeline ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worker(start_process):
    return start_process("worker")


def send(collector: str, write_key: str, messages: list[dict]) -> None:
    client = CollectorClient(collector, write_key)
    try:
        for start in range(0, len(messages), 400):
            status, body = client.send_batch(messages[start:start + 400])
            assert status == 200, body
    finally:
        client.close()


def stored(engine, user_keys: set[str]) -> set[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {', '.join(KEY)} FROM order_attribution WHERE user_key = ANY(:keys)"),
                            {"keys": sorted(user_keys)}).all()
    return as_set(pd.DataFrame(rows, columns=KEY))


def count_events(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM events")).scalar_one()


@pytest.fixture(scope="module")
def runner(test_settings, tmp_path_factory):
    """`spoor segments run`, whose turns attribute the orders of the people changed since the last."""
    settings = test_settings.model_copy(update={
        "segments_topic": f"spoor.test-{run_id(8)}.segments", "segments_poll_s": 0.5,
        "segments_web_port": free_port()})
    create_segment_topics(settings)
    log = open(tmp_path_factory.mktemp("runner") / "segments.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "spoor.cli", "segments", "run"], cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT, env=SpoorProcess("segments", settings, REPO).env())
    yield process
    process.terminate()
    process.wait(30)


def caught_up(engine) -> bool:
    """A turn of the runner started after the last profile was written."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT (SELECT changed_since FROM segment_cursors WHERE name = 'attribution')"
            " > (SELECT max(updated_at) FROM user_profiles)")).scalar() is True


@pytest.fixture(scope="module")
def replayed(collector, worker, runner, write_key, engine):
    rees46, retail = rees46_input(), online_retail_input()
    send(collector, write_key, rees46 + retail)
    wait_until(lambda: count_events(engine) >= len(rees46) + len(retail), 300,
               "every replayed event in PostgreSQL", interval=1)
    wait_until(lambda: runner.poll() is None and caught_up(engine), 600, "the runner's attribution to catch up",
               interval=1)
    return rees46, retail


def test_rees46_sessions_with_seeded_channels_equal_pandas(replayed, engine):
    rees46, _ = replayed
    expected = reference(rees46)
    assert len({row[1] for row in expected}) == 10  # the sample's 10 purchases
    assert stored(engine, {user_of(m) for m in rees46}) == expected


def test_online_retail_invoices_with_seeded_channels_equal_pandas(replayed, engine):
    _, retail = replayed
    expected = reference(retail)
    multi_touch = {row[1] for row in expected if row[3] > 0}
    assert len(multi_touch) > 1000  # repeat customers: orders with earlier sessions in their window
    assert stored(engine, {user_of(m) for m in retail}) == expected


def test_every_conversions_shares_add_up_to_its_amount(replayed, engine):
    with engine.connect() as conn:
        wrong = conn.execute(text(
            "SELECT a.conversion_id, a.model FROM order_attribution a JOIN events e ON e.event_id = a.conversion_id"
            " GROUP BY a.conversion_id, a.model, e.revenue, e.kind"
            " HAVING sum(a.amount) <> CASE WHEN e.kind = 'refund' THEN -e.revenue ELSE e.revenue END")).all()
        net = conn.execute(text(
            "SELECT model, sum(net_revenue) FROM attribution_revenue_daily WHERE currency = 'GBP' GROUP BY model")).all()
        takings = conn.execute(text(
            "SELECT sum(CASE WHEN kind = 'refund' THEN -revenue ELSE revenue END) FROM events"
            " WHERE currency = 'GBP' AND kind IN ('purchase', 'refund')")).scalar_one()
    assert wrong == []
    assert dict(net) == {model: takings for model in ("first_touch", "last_touch", "linear", "position_based")}
