"""Segment's own browser library, @segment/analytics-next from npm, in Debian's headless Chromium,
pointed at a real collector and worker (issue 19).

The library (tests/compat/analytics-next, installed by deploy/segment_compat.sh) runs on a page of
its own origin: bundled from npm as a site bundles it, and as Segment's standalone build behind the
classic snippet. It fetches its settings from Spoor (/v1/projects/{writeKey}/settings), and sends
where they say, to the short paths (/v1/i, /v1/p, /v1/t; /v1/b when batching) as text/plain. Each
test checks ``events`` and ``user_profiles``: every call once, also when the tab closes with events
in flight, and after a collector outage (the library's retries carry X-Retry-Count, a header the
CORS preflight must allow). Chromium resolves no name: nothing can reach Segment's hosts.
"""

import base64
import json
import subprocess
import threading
import time
from decimal import Decimal
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from sqlalchemy import text

from spoor.storage.write_key_origins import set_origins
from spoor.storage.write_keys import create_key
from tests.support.browser_driver import Browser
from tests.support.local_stack import REPO, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

COMPAT = REPO / "tests" / "compat" / "analytics-next"
PACKAGE = COMPAT / "node_modules" / "@segment" / "analytics-next"
CHROMIUM = Path("/usr/bin/chromium")


class Handler(SimpleHTTPRequestHandler):
    """The shop: its pages, the npm bundle, and the standalone build where the snippet asks for it."""

    def log_message(self, *_args):
        pass

    def translate_path(self, path):
        path = path.split("?")[0]
        if path == "/analytics-next.iife.js":
            return str(COMPAT / "dist" / "analytics-next.iife.js")
        if path.startswith("/analytics.js/v1/") and path.endswith("/analytics.min.js"):
            return str(PACKAGE / "dist" / "umd" / "standalone.js")
        if path.startswith("/analytics-next/bundles/"):
            return str(PACKAGE / "dist" / "umd" / Path(path).name)
        return str(COMPAT / "page" / Path(path).name)


@pytest.fixture(scope="module")
def shop():
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: run deploy/chromium.sh (make test does)")
    subprocess.run([str(REPO / "deploy" / "segment_compat.sh"), "browser"], check=True)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(Handler, directory=str(COMPAT)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def pipeline(start_process, test_settings, engine, shop):
    key = create_key(engine, "shop", "web")
    set_origins(engine, "shop", [shop])
    start_collector = partial(start_process, "collector", write_key_refresh_s=1.0)
    state = {"key": key, "collector_url": f"http://127.0.0.1:{test_settings.collector_port}",
             "collector": start_collector(), "start_collector": start_collector}
    start_process("worker")
    return state


@pytest.fixture(scope="module")
def browser():
    driver = Browser(COMPAT, "driver.mjs")
    yield driver
    driver.close()


def open_shop(browser, context, shop) -> str:
    page = browser.call("open", context=context, url=f"{shop}/page/npm.html")
    assert browser.eval(page, "window.ajsReady") is True
    return page


def load(browser, page, pipeline, options: dict | None = None, write_key: str | None = None):
    """AnalyticsBrowser.load({writeKey, cdnURL: Spoor}, options), as a site would call it."""
    settings = {"writeKey": write_key or pipeline["key"], "cdnURL": pipeline["collector_url"]}
    return browser.eval(page, f"""(async () => {{
        window.analytics = AnalyticsBrowser.load({json.dumps(settings)}, {json.dumps(options or {})});
        try {{ await window.analytics; return 'loaded'; }} catch (error) {{ return 'failed: ' + error.message; }}
    }})()""")


def segment_options(pipeline, **segment) -> dict:
    """The load options README shows: apiHost (host:port/v1, no scheme) and protocol of Spoor."""
    parts = urlsplit(pipeline["collector_url"])
    return {"integrations": {"Segment.io": {"apiHost": f"{parts.netloc}/v1", "protocol": parts.scheme, **segment}}}


SHOPPING = """(async (user, wait) => {
    const calls = [
        () => analytics.identify(user, {email: user + '@example.com', plan: 'gold'}),
        () => analytics.page('Shop', 'Home', {path: '/'}),
        () => analytics.track('Product Viewed', {product_id: 'P1', price: 12.5, category: 'Hats'}),
        () => analytics.track('Order Completed', {order_id: 'o-' + user, revenue: 25, currency: 'EUR',
                                                  products: [{product_id: 'P1', price: 12.5, quantity: 2}]}),
    ];
    for (const call of calls) { if (wait) await call(); else call(); }
    return true;
})"""


def shop_as(browser, page, user: str, wait: bool = True):
    browser.eval(page, f"{SHOPPING}({json.dumps(user)}, {json.dumps(wait)})")


def events_of(engine, user_key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT event_id, name, kind, revenue FROM events WHERE user_key = :u "
                                 "ORDER BY event_time"), {"u": user_key}).all()


def profile_of(engine, user_key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM user_profiles WHERE user_key = :u"), {"u": user_key}).first()


def assert_shopping_landed_once(engine, user: str, timeout: float = 60):
    """identify, page, Product Viewed, Order Completed: each in events and in the profile, once."""
    wait_until(lambda: (p := profile_of(engine, user)) and p.events >= 4, timeout, f"{user}'s profile")
    time.sleep(1.5)  # a duplicate would be counted by now
    rows = events_of(engine, user)
    assert sorted(row.kind for row in rows) == ["identify", "page_view", "product_view", "purchase"]
    assert len({row.event_id for row in rows}) == 4
    profile = profile_of(engine, user)
    assert (profile.events, profile.page_views, profile.product_views, profile.orders, profile.revenue) == (
        4, 1, 1, 1, Decimal("25"))
    assert profile.user_id == user


def posts(requests, pipeline) -> list[dict]:
    return [r for r in requests if r["method"] == "POST" and r["url"].startswith(pipeline["collector_url"])]


def body_of(request) -> dict:
    return json.loads(base64.b64decode(request["body"]))


def assert_nothing_left_the_machine(requests):
    assert [r["url"] for r in requests if r["blocked"]] == []


def test_default_mode_takes_its_settings_and_api_host_from_spoor(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop)
    assert load(browser, page, pipeline) == "loaded"  # no apiHost in the options: the settings name Spoor
    shop_as(browser, page, "anx-default")
    assert_shopping_landed_once(engine, "anx-default")

    requests = browser.call("requests", context=context)
    assert_nothing_left_the_machine(requests)
    settings = [r for r in requests if r["method"] == "GET" and "/settings" in r["url"]]
    assert [r["url"] for r in settings] == [f"{pipeline['collector_url']}/v1/projects/{pipeline['key']}/settings"]
    sent = posts(requests, pipeline)
    assert [urlsplit(r["url"]).path for r in sent] == ["/v1/i", "/v1/p", "/v1/t", "/v1/t"]
    for request in sent:
        assert request["headers"]["content-type"] == "text/plain"
        assert body_of(request)["writeKey"] == pipeline["key"]
        assert request["headers"]["authorization"] == "Basic " + base64.b64encode(
            f"{pipeline['key']}:".encode()).decode()


def test_batching_mode_sends_one_batch_to_b(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop)
    # Four calls fill the batch; the timer is far enough away not to cut it in two on a loaded machine.
    batching = {"deliveryStrategy": {"strategy": "batching", "config": {"size": 4, "timeout": 10_000}}}
    assert load(browser, page, pipeline, segment_options(pipeline, **batching)) == "loaded"
    shop_as(browser, page, "anx-batch")
    assert_shopping_landed_once(engine, "anx-batch")

    requests = browser.call("requests", context=context)
    assert_nothing_left_the_machine(requests)
    [batch] = posts(requests, pipeline)
    assert urlsplit(batch["url"]).path == "/v1/b" and batch["headers"]["content-type"] == "text/plain"
    body = body_of(batch)
    assert body["writeKey"] == pipeline["key"] and len(body["batch"]) == 4
    assert [m["type"] for m in body["batch"]] == ["identify", "page", "track", "track"]


def test_batching_mode_sends_a_closing_tabs_events_by_keepalive_once(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop)
    # Nothing would go out before the tab closes: the batch is far from full, the timer a minute away.
    waiting = {"deliveryStrategy": {"strategy": "batching", "config": {"size": 50, "timeout": 60_000}}}
    assert load(browser, page, pipeline, segment_options(pipeline, **waiting)) == "loaded"
    shop_as(browser, page, "anx-closed")
    time.sleep(0.5)
    assert posts(browser.call("requests", context=context), pipeline) == []
    browser.call("close", page=page)  # visibilitychange, pagehide: the buffer goes out with keepalive
    assert_shopping_landed_once(engine, "anx-closed", timeout=30)


def test_default_mode_resends_events_in_flight_when_the_tab_closed_and_they_count_once(
        browser, shop, pipeline, engine):
    context = browser.call("context")
    # The collector gets each /v1/t, but the page hears the answer only 5 s later: the tab closes first.
    browser.call("hold", context=context, path="/v1/t", ms=5000)
    page = open_shop(browser, context, shop)
    assert load(browser, page, pipeline) == "loaded"
    shop_as(browser, page, "anx-in-flight", wait=False)
    wait_until(lambda: (p := profile_of(engine, "anx-in-flight")) and p.events == 4, 60,
               "the collector to have all four")
    browser.call("close", page=page)  # pagehide: analytics-next stores what is in flight in localStorage

    # The next visit sends the stored events again; the pipeline counts each once (by messageId).
    page = open_shop(browser, context, shop)
    assert load(browser, page, pipeline) == "loaded"
    browser.eval(page, "analytics.track('Next Visit')")
    wait_until(lambda: len(posts(browser.call("requests", context=context), pipeline)) >= 7, 20,
               "the stored events to be sent again")
    sent = posts(browser.call("requests", context=context), pipeline)
    track_ids = [body_of(r)["messageId"] for r in sent if urlsplit(r["url"]).path == "/v1/t"]
    assert len(track_ids) > len(set(track_ids)), "nothing was in flight when the tab closed"
    wait_until(lambda: profile_of(engine, "anx-in-flight").events == 5, 30, "the next visit's event")
    time.sleep(1.5)
    rows = events_of(engine, "anx-in-flight")
    assert len(rows) == 5 and profile_of(engine, "anx-in-flight").events == 5
    assert profile_of(engine, "anx-in-flight").orders == 1


def test_classic_snippet_with_the_standalone_build(browser, shop, pipeline, engine):
    context = browser.call("context")
    query = f"writeKey={quote(pipeline['key'])}&cdn={quote(pipeline['collector_url'])}"
    page = browser.call("open", context=context, url=f"{shop}/page/snippet.html?{query}")
    wait_until(lambda: browser.eval(page, "window.analytics.initialized === true"), 20, "the standalone build")
    browser.eval(page, "analytics.track('Snippet Track', {step: 2})")
    anonymous_id = browser.eval(page, "analytics.user().anonymousId()")
    wait_until(lambda: len(events_of(engine, anonymous_id)) >= 2, 60, "the snippet's page and track")
    time.sleep(1)
    assert [row.kind for row in events_of(engine, anonymous_id)] == ["page_view", "custom"]
    requests = browser.call("requests", context=context)
    assert_nothing_left_the_machine(requests)
    # Settings and events from Spoor; the build loaded no lazy chunk (they would come from _cdn too).
    to_spoor = [(r["method"], urlsplit(r["url"]).path) for r in requests
                if r["url"].startswith(pipeline["collector_url"])]
    assert to_spoor == [("GET", f"/v1/projects/{pipeline['key']}/settings"), ("POST", "/v1/p"), ("POST", "/v1/t")]


def test_an_unknown_key_loads_nothing_and_sends_nothing(browser, shop, pipeline):
    context = browser.call("context")
    page = open_shop(browser, context, shop)
    assert load(browser, page, pipeline, write_key="no-such-key") == \
        'failed: {"success":false,"error":"unknown or revoked write key"}'
    browser.eval(page, "(() => { analytics.track('Never Sent'); return true; })()")  # its promise never settles
    time.sleep(1)
    requests = browser.call("requests", context=context)
    assert_nothing_left_the_machine(requests)
    assert [r["url"] for r in requests if not r["url"].startswith(shop)] == [
        f"{pipeline['collector_url']}/v1/projects/no-such-key/settings"]


def test_events_sent_during_a_collector_outage_arrive_once_after_it(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop)
    assert load(browser, page, pipeline) == "loaded"
    pipeline["collector"].stop()
    shop_as(browser, page, "anx-outage", wait=False)
    time.sleep(2)  # the first attempts fail; retries follow with X-Retry-Count (so a preflight)
    pipeline["collector"] = pipeline["start_collector"]()
    assert_shopping_landed_once(engine, "anx-outage", timeout=60)
    retried = [r for r in posts(browser.call("requests", context=context), pipeline)
               if "x-retry-count" in r["headers"]]
    assert retried, "no retry carried X-Retry-Count"
