"""The browser SDK's engagement report (sdk/js/src/engagement.ts) in headless Chromium, through the real
pipeline to the journey views: a page left after ~1.5 s visible gets that as its dwell time."""

import time

import pytest
from sqlalchemy import text

from tests.e2e.test_browser_sdk import browser, init_shop, open_shop, pipeline, shop  # noqa: F401 (fixtures)
from tests.support.local_stack import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_a_page_left_reports_its_visible_time_as_its_dwell(browser, shop, pipeline, engine):  # noqa: F811
    context = browser.call("context")
    page = open_shop(browser, context, shop, pipeline, autoPage=True)
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")
    opened = time.monotonic()
    time.sleep(1.5)
    browser.call("goto", page=page, url=f"{shop}/cart?bundle=iife")  # pagehide: the report leaves with the flush
    left = time.monotonic() - opened
    init_shop(browser, page, pipeline, autoPage=True)

    def steps():
        with engine.connect() as conn:
            return conn.execute(text("SELECT page_type, dwell_s, dwell_source, last_step FROM journey_steps "
                                     "WHERE user_key = :u ORDER BY step"), {"u": anonymous_id}).all()
    wait_until(lambda: len(steps()) == 2 and steps()[0].dwell_source == "visible", 60, "the journey with its dwell")
    first, second = steps()
    assert (first.page_type, second.page_type, second.last_step) == ("home", "cart", True)
    assert 1.4 <= first.dwell_s <= left + 0.5  # the time the page was visible, from the browser's clock
    with engine.connect() as conn:
        names = conn.execute(text("SELECT name FROM events WHERE user_key = :u ORDER BY event_time"),
                             {"u": anonymous_id}).scalars().all()
    assert names == ["page", "Page Engagement", "page"]
