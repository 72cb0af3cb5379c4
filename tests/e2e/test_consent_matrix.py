"""Consent per purpose, end to end (issue 24): shoppers whose pages send `context.consent.categoryPreferences`
through the HTTP collector, Kafka, a real worker, PostgreSQL, a real `spoor segments run` and `spoor campaigns
run` (a segment-entry campaign with a signed webhook) and the admin API's recommendations. Each purpose is
switched off in turn, by the page or by `spoor users consent`, and for a person with two ids:

| shopper          | analytics | marketing | personalisation | how            |
| full             | yes       | yes       | yes             | page           |
| no_analytics     | no        | yes       | yes             | page           |
| no_marketing     | yes       | no        | yes             | page           |
| no_personal      | yes       | yes       | no              | page           |
| recorded_out     | no        | yes       | yes             | page says yes; `spoor users consent --withdraw analytics` wins |
| member (+ anon)  | yes, then no | no     | yes             | marketing withdrawn under the anonymous id before the login merged the |
|                  |           |           |                 | ids; analytics withdrawn under the anonymous id after it |
"""

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest
from sqlalchemy import text

from spoor.campaigns.webhook_delivery import verify
from spoor.cli.collector_client import CollectorClient
from spoor.topics import create_segment_topics, partition_for
from tests.support.local_stack import REPO, SpoorProcess, free_port, run_id, spoor_commands, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
SECRET = "consent-webhook-secret"
TOKEN = "consent-admin-token"
CAMPAIGN = "consent_matrix"
SEGMENT = "browsed_consent"
# The matrix's events share one past minute: its metric window closes when a later event arrives.
MINUTE = (datetime.now(timezone.utc) - timedelta(minutes=10)).replace(second=0, microsecond=0)
ALL = {"Analytics": True, "Advertising": True, "Personalization": True, "Functional": True}


@pytest.fixture(scope="module")
def settings(test_settings):
    run = run_id(8)
    settings = test_settings.model_copy(update={
        "campaign_webhook_secret": SECRET, "admin_token": TOKEN, "admin_api_port": free_port(),
        "triggers_topic": f"spoor.test-{run}.triggers", "segments_topic": f"spoor.test-{run}.segments",
        "campaigns_dead_letter_topic": f"spoor.test-{run}.cdlq", "segments_poll_s": 0.5, "campaigns_poll_s": 0.5,
        "segments_change_overlap_s": 5.0, "segments_web_port": free_port(), "campaigns_web_port": free_port(),
        "webhook_allow_private_addresses": True, "consent_refresh_s": 1.0,
        "metric_lateness_s": 60.0, "metric_idle_partition_s": 2.0})
    create_segment_topics(settings)
    return settings


@pytest.fixture(scope="module")
def processes(settings, tmp_path_factory):
    """`spoor segments run`, `spoor campaigns run` and the admin API (`spoor segments api`), as real processes."""
    with spoor_commands(settings, tmp_path_factory.mktemp("consent-logs"),
                        [("segments", "run"), ("campaigns", "run"), ("segments", "api")],
                        [settings.segments_web_port, settings.campaigns_web_port, settings.admin_api_port]) as log_dir:
        yield log_dir


def http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def spoor(settings, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "spoor.cli", *args], cwd=REPO, input=stdin, text=True,
                            capture_output=True, env=SpoorProcess("cli", settings, REPO).env(), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def keys(engine, table: str, users: list[str]) -> set[str]:
    return {r[0] for r in rows(engine, f"SELECT DISTINCT user_key FROM {table} WHERE user_key = ANY(:u)", u=users)}


def browsing(user: str, preferences: dict | None, *, anonymous: bool = False, at: datetime = MINUTE,
             tag: str = "") -> list[dict]:
    """Two product views and a cart add, in one session, stating ``preferences`` (None: no consent object)."""
    context = {"sessionId": f"{user}-s"} | ({} if preferences is None else
                                           {"consent": {"categoryPreferences": preferences}})
    who = {"anonymousId": user} if anonymous else {"userId": user}
    return [{"type": "track", "event": name, **who, "messageId": f"{user}-{tag}{n}", "context": context,
             "timestamp": (at + timedelta(seconds=n)).isoformat(),
             "properties": {"product_id": f"SKU-{n % 2}", "category": "mugs", "price": 12}}
            for n, name in enumerate(("Product Viewed", "Product Viewed", "Product Added"))]


def metric(url: str, name: str) -> float:
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_each_purpose_switched_off_in_turn(settings, collector, write_key, engine, start_process, receiver,
                                           processes):
    worker = start_process("worker", consent_refresh_s=1.0, metric_lateness_s=60.0, metric_idle_partition_s=2.0)
    run = run_id(6)
    full, no_analytics, no_marketing, no_personal, recorded_out = (
        f"{name}-{run}" for name in ("full", "no-analytics", "no-marketing", "no-personal", "recorded-out"))
    member, anon = f"member-{run}", f"anon-{run}"
    shoppers = [full, no_analytics, no_marketing, no_personal, recorded_out]
    client = CollectorClient(collector, write_key)

    spoor(settings, "segments", "define", "-", stdin=f"""
name: {SEGMENT}
where: 'did "Product Viewed" in last 1d'
""")
    spoor(settings, "segments", "launch", SEGMENT)
    # The delay leaves time to withdraw the merged person's marketing consent before their message is due.
    spoor(settings, "campaigns", "define", "-", stdin=f"""
name: {CAMPAIGN}
audience: {{segment_entry: {SEGMENT}}}
action: {{webhook: "{receiver.url}"}}
delay: 20s
holdout_percent: 0
recommendations: {{k: 3}}
""")
    spoor(settings, "campaigns", "launch", CAMPAIGN)
    # Recorded before any event: the page's "yes" does not undo it.
    recorded = orjson.loads(spoor(settings, "users", "consent", recorded_out, "--withdraw", "analytics"))
    assert recorded["analytics"] is False and recorded["opted_out"] is False
    # Recorded under the anonymous id before the shopper logs in: it follows them into the member's consent.
    assert orjson.loads(spoor(settings, "users", "consent", anon, "--withdraw", "marketing"))["user_key"] == anon

    batch = (browsing(full, ALL) + browsing(no_analytics, {**ALL, "Analytics": False})
             + browsing(no_marketing, {**ALL, "Advertising": False})
             + browsing(no_personal, {**ALL, "Personalization": False}) + browsing(recorded_out, ALL)
             + browsing(anon, ALL, anonymous=True)
             + [{"type": "identify", "userId": member, "anonymousId": anon, "messageId": f"{member}-login",
                 "timestamp": (MINUTE + timedelta(seconds=5)).isoformat(),
                 "context": {"consent": {"categoryPreferences": ALL}}}])
    status, body = client.post("/v1/batch", {"batch": batch})
    assert status == 200, body

    # The merged person: the consent recorded under the anonymous id is now the member's.
    def where_the_merge_stands() -> str:
        person = [anon, member]
        links = rows(engine, "SELECT * FROM user_identities WHERE id = ANY(:k) OR user_key = ANY(:k)", k=person)
        profiles = rows(engine, "SELECT user_key, events FROM user_profiles WHERE user_key = ANY(:k)", k=person)
        return "\n".join([f"user_identities: {links}", f"profiles: {profiles}",
                          f"stored events: {rows(engine, 'SELECT count(*) FROM events')}",
                          f"worker exit code: {worker.process.poll()}", worker.log_tail(40)])

    wait_until(lambda: rows(engine, "SELECT 1 FROM user_identities WHERE id = :a AND user_key = :m AND status = "
                                    "'merged'", a=anon, m=member), 60, "the anonymous id merged into the member",
               explain=where_the_merge_stands)
    wait_until(lambda: rows(engine, "SELECT user_key, marketing FROM user_consent WHERE user_key = ANY(:k)",
                            k=[anon, member]) == [(member, False)], 30, "the anonymous id's consent merged")

    consenting = {full, no_marketing, no_personal}
    wait_until(lambda: keys(engine, "user_profiles", shoppers) == consenting, 60, "the consenting profiles")
    wait_until(lambda: keys(engine, "segment_members", shoppers + [member]) == consenting | {member}, 60,
               "the segment's consenting members")

    # Analytics: the profile, events, session, rolling activity, interests and segment hold only consenting people.
    for table in ("user_profiles", "events", "sessions", "user_activity", "user_interests", "segment_members"):
        assert keys(engine, table, shoppers) == consenting, table
    assert rows(engine, "SELECT events, product_views, cart_adds FROM user_profiles WHERE user_key = :u",
                u=full) == [(3, 2, 1)]
    # ...yet every event counts in the anonymous metric windows, once the minute closes (a later event).
    clocks, covered = [], set()  # a later event on every partition closes the minute everywhere
    for i in range(1000):
        if len(covered) == settings.topic_partitions:
            break
        if partition_for(f"clock-{run}-{i}", settings.topic_partitions) not in covered:
            covered.add(partition_for(f"clock-{run}-{i}", settings.topic_partitions))
            clocks += browsing(f"clock-{run}-{i}", ALL, at=datetime.now(timezone.utc))
    status, _ = client.post("/v1/batch", {"batch": clocks})
    assert status == 200
    expected = len(batch)  # the five shoppers' 15 events, the anonymous id's 3 and the identify
    try:
        wait_until(lambda: rows(engine, "SELECT sum(events) FROM metric_windows WHERE resolution = '1m' AND "
                                        "dimension = 'global' AND window_start = :m", m=MINUTE) == [(expected,)],
                   60, f"the closed minute to count all {expected} events")
    except AssertionError:
        print(MINUTE, rows(engine, "SELECT window_start, partition, events, partial FROM metric_windows WHERE "
                                   "resolution = '1m' AND dimension = 'global' ORDER BY 1, 2"))
        print(rows(engine, "SELECT * FROM metric_watermarks"))
        print(httpx.get(f"http://127.0.0.1:{settings.worker_web_port}/metrics").text)
        raise
    worker_metrics = f"http://127.0.0.1:{settings.worker_web_port}/metrics"
    assert metric(worker_metrics, 'spoor_consent_withheld_total{purpose="analytics"}') == 6
    assert metric(worker_metrics, 'spoor_worker_events_total{outcome="withheld"}') == 6

    # Marketing: the campaign acts on the consenting members only; the merged person's withdrawal holds.
    def settled():
        status: dict[str, set] = {}
        for user, state in rows(engine, "SELECT user_key, status FROM campaign_deliveries WHERE campaign = :c "
                                        "AND user_key = ANY(:u)", c=CAMPAIGN, u=shoppers + [member, anon]):
            status.setdefault(user, set()).add(state)
        done = {full, no_personal, no_marketing} <= status.keys() and status.keys() & {member, anon}
        return status if done and not any("pending" in s for s in status.values()) else None

    decided = wait_until(settled, 90, "every delivery to be decided")
    person = decided.pop(member, set()) | decided.pop(anon, set())  # the anonymous id's entry, or the member's
    assert decided == {full: {"sent"}, no_personal: {"sent"}, no_marketing: {"opted_out"}}
    assert person == {"opted_out"}
    assert {call["payload"]["user_key"] for call in receiver.calls} & set(shoppers + [member, anon]) == {
        full, no_personal}
    for call in receiver.calls:
        headers = call["headers"]
        assert verify(SECRET, headers["X-Spoor-Timestamp"], call["body"], headers["X-Spoor-Signature"])
    campaign_metrics = f"http://127.0.0.1:{settings.campaigns_web_port}/metrics"
    (dropped,), = rows(engine, "SELECT count(*) FROM campaign_deliveries WHERE status = 'opted_out'")
    assert dropped >= 2 and metric(campaign_metrics, 'spoor_consent_withheld_total{purpose="marketing"}') == dropped

    # Personalisation: the same request gives a personal list only with consent; the fallback otherwise.
    api = httpx.Client(base_url=f"http://127.0.0.1:{settings.admin_api_port}",
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    lists = {user: api.get(f"/v1/recommendations/users/{user}", params={"k": 3}).json()
             for user in (full, no_marketing, no_personal)}
    assert lists[full]["personal"] is True and lists[no_marketing]["personal"] is True
    assert lists[no_personal]["personal"] is False
    assert {i["reason"] for i in lists[no_personal]["items"]} <= {"trending now"}
    sent = {call["payload"]["user_key"]: call["payload"] for call in receiver.calls}
    assert sent[full]["recommendations"] and sent[no_personal]["recommendations"]
    # The message carries the non-personal list too (what is trending, not what the shopper looked at).
    assert {i["reason"] for i in sent[no_personal]["recommendations"]} <= {"trending now"}
    assert "viewed with SKU-0" in {i["reason"] for i in sent[full]["recommendations"]} | {
        i["reason"] for i in lists[full]["items"]}

    # Analytics withdrawn under the anonymous id while the worker runs: the person's next events, under
    # either id, are withheld (within SPOOR_CONSENT_REFRESH_S), and counted as such.
    (member_events,), = rows(engine, "SELECT events FROM user_profiles WHERE user_key = :m", m=member)
    spoor(settings, "users", "consent", anon, "--withdraw", "analytics")
    before = metric(worker_metrics, 'spoor_consent_withheld_total{purpose="analytics"}')
    time.sleep(2.5)  # SPOOR_CONSENT_REFRESH_S is 1 s here
    later = datetime.now(timezone.utc)
    status, _ = client.post("/v1/batch", {"batch": browsing(anon, ALL, anonymous=True, at=later, tag="later-")
                                          + browsing(member, ALL, at=later, tag="later-")})
    assert status == 200
    wait_until(lambda: metric(worker_metrics, 'spoor_consent_withheld_total{purpose="analytics"}') - before == 6,
               60, "the person's six later events withheld")
    assert rows(engine, "SELECT events FROM user_profiles WHERE user_key = :m", m=member) == [(member_events,)]
    assert rows(engine, "SELECT count(*) FROM events WHERE user_key = :m AND event_time >= :t", m=member,
                t=later) == [(0,)]
    # What was recorded, as `spoor users show` and the export give it.
    shown = orjson.loads(spoor(settings, "users", "show", anon))
    assert shown["user_key"] == member
    assert shown["consent"]["analytics"] is False and shown["consent"]["marketing"] is False
    (page,), = rows(engine, "SELECT page_personalisation FROM user_consent WHERE user_key = :u", u=no_personal)
    assert page is False
