"""The browser SDK (sdk/js) in Debian's headless Chromium against the real pipeline.

A page served from its own origin loads the built bundle and sends, cross-origin,
to a real collector; a real worker writes to PostgreSQL. Each test checks the
``events`` table: every event once, in the order it was tracked, through a
collector outage, a reload, a closed tab, and an opt-out.
"""

import base64
import gzip
import json
import shutil
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import text

from spoor.storage.write_key_origins import set_origins
from spoor.storage.write_keys import create_key
from tests.support.browser_driver import Browser
from tests.support.local_stack import REPO, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SDK = REPO / "sdk" / "js"
CHROMIUM = Path("/usr/bin/chromium")
# Short delays so an outage test takes seconds; the defaults are 1 s doubling to 30 s.
TEST_OPTIONS = {"flushIntervalMs": 300, "retryBaseMs": 300, "retryMaxMs": 1500}


class Handler(SimpleHTTPRequestHandler):
    def log_message(self, *_args):
        pass

    def translate_path(self, path):
        name = path.split("?")[0].lstrip("/")
        if name in ("spoor.iife.js", "spoor.mjs"):
            return str(SDK / "dist" / name)
        return str(SDK / "test" / "e2e" / "page.html")


@pytest.fixture(scope="module")
def shop():
    """The test shop's page and the built bundles, on an origin of its own."""
    if not (SDK / "node_modules").is_dir() or shutil.which("node") is None:
        pytest.fail("sdk/js has no node_modules: run `make test` (it runs npm ci there)")
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: run deploy/chromium.sh (make test does)")
    subprocess.run(["node", "scripts/build.mjs"], cwd=SDK, check=True)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(Handler, directory=str(SDK)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def pipeline(start_process, test_settings, engine, shop):
    key = create_key(engine, "shop", "web")
    set_origins(engine, "shop", [shop])
    start_collector = partial(start_process, "collector", write_key_refresh_s=1.0)
    state = {"key": key, "host": f"http://127.0.0.1:{test_settings.collector_port}",
             "collector": start_collector(), "start_collector": start_collector}
    start_process("worker")
    return state


@pytest.fixture(scope="module")
def browser():
    driver = Browser(SDK, "test/e2e/driver.mjs")
    yield driver
    driver.close()


def open_shop(browser, context, shop, pipeline, bundle="iife", **options) -> str:
    page = browser.call("open", context=context, url=f"{shop}/?bundle={bundle}")
    init_shop(browser, page, pipeline, **options)
    return page


def init_shop(browser, page, pipeline, **options):
    wait_until(lambda: browser.eval(page, "window.spoorReady === true"), 10, "the bundle to load")
    config = {"writeKey": pipeline["key"], "host": pipeline["host"], **TEST_OPTIONS, **options}
    browser.eval(page, f"spoor.init({json.dumps(config)})")


def track_all(browser, page, names):
    browser.eval(page, f"{json.dumps(names)}.forEach((name) => spoor.track(name, {{step: name}}))")


def rows_of(engine, user_key):
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT event_id, name, kind, revenue FROM events WHERE user_key = :user "
            "ORDER BY received_at, event_time"), {"user": user_key}).all()


def assert_once_in_order(engine, user_key, expected, timeout=60.0):
    """Every expected event arrives, once, accepted in the order it was tracked."""
    wait_until(lambda: len(rows_of(engine, user_key)) >= len(expected), timeout,
               f"{len(expected)} events of {user_key}")
    rows = rows_of(engine, user_key)
    assert [row.name for row in rows] == expected
    return rows


def profile_event_count(engine, user_key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT events FROM user_profiles WHERE user_key = :u"), {"u": user_key}).scalar()


def request_body(request) -> dict:
    raw = base64.b64decode(request["body"])
    return json.loads(gzip.decompress(raw) if request["headers"].get("content-encoding") == "gzip" else raw)


def queue_keys(browser, page):
    return browser.eval(page, "Object.keys(localStorage).filter((k) => k.startsWith('spoor:q:'))")


def wait_to_see(browser, page, keys, what):
    """Wait until `page` sees these stored keys. Every tab reads a copy of localStorage in its own
    renderer process, and Chromium forwards another tab's writes to it asynchronously: the other tab's
    eval returning does not mean this tab sees them yet."""
    wait_until(lambda: set(keys) <= set(queue_keys(browser, page)), 5, what)


def stored_event(browser, page, name) -> list:
    """[key, value] of the event `name` that this tab stored (a tab sees its own writes at once)."""
    return browser.eval(page, f"""Object.keys(localStorage).filter((k) => k.startsWith('spoor:q:'))
        .map((k) => [k, localStorage.getItem(k)]).find(([, v]) => JSON.parse(v).event === {json.dumps(name)})""")


def land_late(browser, tab, page, stored):
    """The outcome of a tab queuing an event as another tab opts out: its write reaches storage after
    both tabs deleted the queue, and it closes before it hears of the opt-out. The race made certain:
    `tab` writes the event back after it opted out, `page` sees it, then `tab` closes."""
    browser.eval(tab, f"localStorage.setItem({json.dumps(stored[0])}, {json.dumps(stored[1])})")
    wait_to_see(browser, page, [stored[0]], "the late write to reach the other tab")
    browser.call("close", page=tab)


def test_shopper_journey_arrives_once_in_order(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop, pipeline, autoPage=True, clickAttribute="data-spoor-click")
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    assert f"spoor_aid={anonymous_id}" in browser.eval(page, "document.cookie")

    browser.eval(page, "spoor.productViewed({product_id: 'P9', category: 'Shoes', price: 9.5})")
    browser.call("click", page=page, selector="#buy")
    browser.call("click", page=page, selector="#plain")  # not marked: no event
    browser.eval(page, """(() => {
        const line = {product_id: 'P9', category: 'Shoes', price: 9.5, quantity: 1};
        spoor.productAdded({...line, quantity: 2});
        spoor.productRemoved(line);
        spoor.checkoutStarted({order_id: 'O1', products: [line]});
        spoor.orderCompleted({order_id: 'O1', total: 9.5, currency: 'EUR', products: [line]});
        spoor.identify('user-42', {plan: 'gold'});
        spoor.track('Wishlist Viewed');
    })()""")

    # One shopper, one profile (docs/identity.md): what the page tracked before the login is the user's.
    journey = ["page", "Product Viewed", "Product Clicked", "Product Added", "Product Removed", "Checkout Started",
               "Order Completed", "identify", "Wishlist Viewed"]
    wait_until(lambda: not rows_of(engine, anonymous_id), 60, "the anonymous rows to move to the user")
    rows = assert_once_in_order(engine, "user-42", journey)
    assert [row.kind for row in rows] == ["page_view", "product_view", "click", "cart_add", "cart_remove",
                                          "checkout", "purchase", "identify", "custom"]
    assert float(rows[6].revenue) == 9.5
    wait_until(lambda: profile_event_count(engine, "user-42") == len(journey), 30, "the merged profile")
    with engine.connect() as conn:
        profile = conn.execute(text("SELECT page_views, orders FROM user_profiles WHERE user_key = 'user-42'")).one()
        anonymous_profiles = conn.execute(text("SELECT count(*) FROM user_profiles WHERE user_key = :a"),
                                          {"a": anonymous_id}).scalar()
    assert (profile.page_views, profile.orders, anonymous_profiles) == (1, 1, 0)

    # What went over the wire: Segment batches with sentAt, basic auth, ids and one session.
    requests = browser.call("requests", context=context)
    messages = []
    for request in requests:
        assert request["url"] == f"{pipeline['host']}/v1/batch"
        assert request["headers"]["authorization"] == "Basic " + base64.b64encode(
            f"{pipeline['key']}:".encode()).decode()
        body = request_body(request)
        assert body["sentAt"].endswith("Z")
        messages += body["batch"]
    assert len({m["messageId"] for m in messages}) == len(messages) == 9
    sessions = {m["context"]["sessionId"] for m in messages} | {m["properties"]["session_id"] for m in messages}
    assert len(sessions) == 1
    assert {m["anonymousId"] for m in messages} == {anonymous_id}
    assert messages[2]["properties"] == {"product_id": "P9", "price": "9.50", "session_id": sessions.pop()}


def test_a_visit_by_a_campaign_link_carries_its_utm_parameters_to_the_session(browser, shop, pipeline, engine):
    """Channel attribution (docs/attribution.md) reads the session's UTM source and medium: the SDK sends
    the landing URL's utm_* as Segment's context.campaign."""
    context = browser.call("context")
    page = browser.call("open", context=context,
                        url=f"{shop}/?bundle=iife&utm_source=newsletter&utm_medium=email&utm_campaign=spring")
    init_shop(browser, page, pipeline, autoPage=True)
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    query = text("SELECT utm_source, utm_medium, utm_campaign FROM sessions WHERE user_key = :u")
    found = []
    wait_until(lambda: found.extend(engine.connect().execute(query, {"u": anonymous_id}).all()) or found, 60,
               "the session row")
    assert [tuple(row) for row in found] == [("newsletter", "email", "spring")]


def test_calls_recorded_by_the_async_snippet_are_replayed(browser, shop, pipeline, engine):
    config = {"writeKey": pipeline["key"], "host": pipeline["host"], **TEST_OPTIONS}
    context = browser.call("context")
    page = browser.call("open", context=context, url=f"{shop}/?bundle=snippet&config={quote(json.dumps(config))}")
    wait_until(lambda: browser.eval(page, "window.spoorReady === true"), 10, "the bundle to load")
    browser.eval(page, "spoor.push(['track', 'Snippet 3'])")
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    assert_once_in_order(engine, anonymous_id, ["Snippet 1", "Snippet 2", "Snippet 3"])


def test_collector_outage_and_reload_lose_nothing(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop, pipeline, bundle="esm")
    before = [f"Before outage {i}" for i in range(5)]
    track_all(browser, page, before)
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    assert_once_in_order(engine, anonymous_id, before)

    pipeline["collector"].stop()
    during = [f"During outage {i}" for i in range(8)]
    track_all(browser, page, during)
    wait_until(lambda: browser.eval(page, "spoor.stats().retrying"), 10, "the SDK to back off")
    assert browser.eval(page, "spoor.stats().queued") == len(during)

    # A reload while the collector is down: the queue survives in localStorage.
    browser.call("goto", page=page, url=f"{shop}/?bundle=esm&reloaded=1")
    init_shop(browser, page, pipeline, bundle="esm")
    after = [f"After reload {i}" for i in range(4)]
    track_all(browser, page, after)
    assert browser.eval(page, "spoor.stats().queued") == len(during) + len(after)
    time.sleep(2)
    assert len(rows_of(engine, anonymous_id)) == len(before)

    pipeline["collector"] = pipeline["start_collector"]()
    assert_once_in_order(engine, anonymous_id, before + during + after)
    # The 12 events that waited went out as one batch, large enough to be gzipped.
    encodings = [r["headers"].get("content-encoding") for r in browser.call("requests", context=context)]
    assert "gzip" in encodings
    wait_until(lambda: not queue_keys(browser, page), 10, "the queue to be acknowledged")
    assert browser.eval(page, "spoor.stats()") == {"queued": 0, "dropped": 0, "retrying": False}


def test_events_queued_when_the_tab_closes_arrive_once(browser, shop, pipeline, engine):
    context = browser.call("context")
    # Nothing would be sent before the tab closes: the size and interval triggers are far away.
    page = open_shop(browser, context, shop, pipeline, flushAt=1000, flushIntervalMs=600_000)
    queued = [f"Queued {i}" for i in range(12)]
    track_all(browser, page, queued)
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    assert browser.eval(page, "spoor.stats().queued") == len(queued)
    browser.call("close", page=page)
    assert_once_in_order(engine, anonymous_id, queued, timeout=30)

    # The closed tab never heard the answer, so its queue is still stored: the next
    # visit sends it again, and the pipeline counts each event once.
    page = open_shop(browser, context, shop, pipeline)
    browser.eval(page, "spoor.track('Next visit')")
    assert_once_in_order(engine, anonymous_id, [*queued, "Next visit"])
    wait_until(lambda: not queue_keys(browser, page), 10, "the queue to be acknowledged")
    wait_until(lambda: profile_event_count(engine, anonymous_id) == len(queued) + 1, 20,
               "the profile to count 13 events")
    time.sleep(1)
    assert profile_event_count(engine, anonymous_id) == len(queued) + 1
    assert len(rows_of(engine, anonymous_id)) == len(queued) + 1


def test_a_browser_without_keepalive_sends_the_closing_tabs_queue_by_beacon(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop, pipeline, flushAt=1000, flushIntervalMs=600_000)
    # As in a browser without keepalive fetch; each beacon is counted where the next visit can read it.
    assert browser.eval(page, """(() => {
        delete Request.prototype.keepalive;
        const send = navigator.sendBeacon.bind(navigator);
        navigator.sendBeacon = (url, data) => {
            localStorage.setItem('test:beacons', String(Number(localStorage.getItem('test:beacons') || 0) + 1));
            return send(url, data);
        };
        return !('keepalive' in Request.prototype);
    })()""") is True
    queued = [f"Beacon {i}" for i in range(8)]
    track_all(browser, page, queued)
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    browser.call("close", page=page)
    assert_once_in_order(engine, anonymous_id, queued, timeout=30)

    # A beacon's answer is never known, so the queue stayed stored: the next visit sends it again,
    # and the pipeline counts each event once.
    page = open_shop(browser, context, shop, pipeline)
    assert browser.eval(page, "localStorage.getItem('test:beacons')") == "1"
    browser.eval(page, "spoor.track('Next visit')")
    assert_once_in_order(engine, anonymous_id, [*queued, "Next visit"])
    wait_until(lambda: profile_event_count(engine, anonymous_id) == len(queued) + 1, 20,
               "the profile to count 9 events")


def test_opt_out_stops_collection_and_clears_the_queue(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop, pipeline, flushAt=1000, flushIntervalMs=600_000)
    other_tab = open_shop(browser, context, shop, pipeline, flushAt=1000, flushIntervalMs=600_000)
    track_all(browser, page, ["Before opt-out 1", "Before opt-out 2"])
    track_all(browser, other_tab, ["Other tab before opt-out"])
    stranded = stored_event(browser, other_tab, "Other tab before opt-out")
    # This tab must see the other tab's event before its opt-out can be shown to delete it.
    wait_to_see(browser, page, [stranded[0]], "this tab to see the other tab's queued event")
    assert len(queue_keys(browser, page)) == 3
    browser.eval(page, "spoor.optOut()")
    browser.eval(page, "spoor.track('While opted out')")
    assert browser.eval(page, "spoor.stats().queued") == 0
    assert queue_keys(browser, page) == []
    # The other tab hears of it through the storage event and drops its queue too.
    wait_until(lambda: browser.eval(other_tab, "spoor.isOptedOut()"), 5, "the other tab to opt out")
    assert browser.eval(other_tab, "spoor.stats().queued") == 0
    land_late(browser, other_tab, page, stranded)
    assert browser.eval(page, "localStorage.getItem('spoor:aid')") is None
    assert "spoor_aid=" not in browser.eval(page, "document.cookie")

    browser.call("goto", page=page, url=f"{shop}/?again=1")
    init_shop(browser, page, pipeline)
    assert browser.eval(page, "spoor.isOptedOut()") is True  # remembered across visits
    assert queue_keys(browser, page) == []  # the event that landed late is deleted by the opted-out visit
    browser.eval(page, "spoor.track('Reloaded while opted out')")
    browser.call("close", page=page)  # the unload path must not send anything either

    page = open_shop(browser, context, shop, pipeline)
    browser.eval(page, "spoor.optIn(); spoor.track('After opt-in'); spoor.flush()")
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    assert_once_in_order(engine, anonymous_id, ["After opt-in"])
    with engine.connect() as conn:
        leaked = conn.execute(text("SELECT name FROM events WHERE name LIKE '%opt%' AND name <> 'After opt-in'")).all()
    assert leaked == []


def test_an_event_that_outlived_the_opt_out_is_not_sent_after_an_opt_in(browser, shop, pipeline, engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop, pipeline, flushAt=1000, flushIntervalMs=600_000)
    closing_tab = open_shop(browser, context, shop, pipeline, flushAt=1000, flushIntervalMs=600_000)
    track_all(browser, closing_tab, ["Queued as the opt-out landed"])
    stranded = stored_event(browser, closing_tab, "Queued as the opt-out landed")
    browser.eval(page, "spoor.optOut()")
    wait_until(lambda: browser.eval(closing_tab, "spoor.isOptedOut()"), 5, "the other tab to opt out")
    land_late(browser, closing_tab, page, stranded)

    # Opted in again on the same page, so no opted-out visit deletes it first: the next page load
    # adopts what closed tabs left queued, and must leave out what was queued before the opt-in.
    browser.eval(page, "spoor.optIn(); spoor.track('After opt-in'); spoor.flush()")
    browser.call("goto", page=page, url=f"{shop}/?reloaded=1")
    init_shop(browser, page, pipeline)
    browser.eval(page, "spoor.track('After reload'); spoor.flush()")  # resolves once the queue is empty
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    assert_once_in_order(engine, anonymous_id, ["After opt-in", "After reload"])
    sent = [m["event"] for r in browser.call("requests", context=context) for m in request_body(r)["batch"]]
    assert "Queued as the opt-out landed" not in sent
    assert queue_keys(browser, page) == []
    with engine.connect() as conn:
        stranded_rows = conn.execute(text("SELECT count(*) FROM events WHERE name = :name"),
                                     {"name": "Queued as the opt-out landed"}).scalar()
    assert stranded_rows == 0


def test_rate_limited_sdk_waits_the_retry_after_it_can_read_through_cors(browser, shop, pipeline, engine,
                                                                         start_process):
    # A second collector whose per-key bucket holds 2 events and refills 1 per second, so
    # batches sent back to back are answered 429 with a Retry-After.
    port = free_port()
    start_process("collector", collector_port=port, rate_limit_events_per_s=1.0, rate_limit_burst_events=2)
    context = browser.call("context")
    page = open_shop(browser, context, shop, {**pipeline, "host": f"http://127.0.0.1:{port}"},
                     flushAt=1, maxBatchEvents=2)
    # Every send the SDK makes, timed in the page: start, answer, status, the Retry-After it could read.
    browser.eval(page, """(() => {
        window.sends = [];
        const realFetch = window.fetch;
        window.fetch = async (url, init) => {
            const send = {start: performance.now(), first: JSON.parse(init.body).batch[0].messageId};
            window.sends.push(send);
            const response = await realFetch(url, init);
            Object.assign(send, {end: performance.now(), status: response.status,
                                 retryAfter: response.headers.get('Retry-After')});
            return response;
        };
    })()""")
    names = [f"Limited {i}" for i in range(6)]
    track_all(browser, page, names)
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    assert_once_in_order(engine, anonymous_id, names)

    sends = browser.eval(page, "window.sends")
    throttled = [(send, retry) for send, retry in zip(sends, sends[1:]) if send["status"] == 429]
    assert throttled, f"the collector never answered 429: {sends}"
    for send, retry in throttled:
        assert send["retryAfter"] is not None, "Retry-After not readable: is it in Access-Control-Expose-Headers?"
        assert retry["first"] == send["first"]  # the same head of the queue, nothing jumped ahead
        # Without Retry-After the SDK would have retried after 150-300 ms (retryBaseMs 300).
        assert retry["start"] - send["end"] >= int(send["retryAfter"]) * 1000 - 10, (send, retry)
