"""The browser SDK's consent (sdk/js/src/consent.ts) in headless Chromium against the real collector and
worker: a banner's `spoor.consent(...)` is kept across visits and tabs, goes on every event, and the worker
keeps the events of a visitor without analytics consent out of the `events` table and records what the
page stated in `user_consent` (docs/privacy.md#consent)."""

import pytest
from sqlalchemy import text

from tests.e2e.test_browser_sdk import assert_once_in_order, browser, init_shop, open_shop, pipeline, shop  # noqa: F401
from tests.support.local_stack import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def page_statement(engine, user_key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT page_analytics, page_marketing, page_personalisation FROM user_consent "
                                 "WHERE user_key = :u"), {"u": user_key}).first()


def event_names(engine, user_key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT name FROM events WHERE user_key = :u ORDER BY received_at, event_time"),
                            {"u": user_key}).scalars().all()


def test_a_banners_answer_travels_with_every_event_and_decides_what_is_profiled(browser, shop, pipeline,  # noqa: F811
                                                                                  engine):
    context = browser.call("context")
    page = open_shop(browser, context, shop, pipeline)
    other_tab = open_shop(browser, context, shop, pipeline)
    browser.eval(page, "spoor.consent({analytics: false, marketing: true, personalisation: true})")
    anonymous_id = browser.eval(page, "localStorage.getItem('spoor:aid')")  # made by the consent event
    assert browser.eval(page, "spoor.consentPreferences()") == {"analytics": False, "marketing": True,
                                                                 "personalisation": True}
    # Refused with a warning, nothing changed.
    browser.eval(page, "spoor.consent({analytics: 'yes'}); spoor.consent(null)")
    assert browser.eval(page, "spoor.consentPreferences().analytics") is False
    wait_until(lambda: browser.eval(other_tab, "spoor.consentPreferences()") is not None, 5,
               "the other tab to hear the banner's answer")
    browser.eval(page, "spoor.track('Unconsented 1'); spoor.track('Unconsented 2'); spoor.flush()")
    browser.eval(other_tab, "spoor.track('Unconsented in the other tab'); spoor.flush()")
    # The worker records what the page said, and keeps the events out of the events table.
    wait_until(lambda: page_statement(engine, anonymous_id) == (False, True, True), 60,
               "the page's statement recorded")

    # A later visit remembers the answer; the visitor now consents to analytics but not to marketing.
    browser.call("goto", page=page, url=f"{shop}/?again=1")
    init_shop(browser, page, pipeline)
    assert browser.eval(page, "spoor.consentPreferences().analytics") is False
    browser.eval(page, "spoor.consent({analytics: true, marketing: false, personalisation: true})")
    browser.eval(page, "spoor.track('Consented 1'); spoor.flush()")
    wait_until(lambda: page_statement(engine, anonymous_id) == (True, False, True), 60,
               "the new statement recorded")
    assert_once_in_order(engine, anonymous_id, ["Segment Consent Preference Updated", "Consented 1"])
    assert not {"Unconsented 1", "Unconsented 2", "Unconsented in the other tab"} & set(
        event_names(engine, anonymous_id))
