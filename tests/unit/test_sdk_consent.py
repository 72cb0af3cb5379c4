"""The Python SDK's consent option (sdk/python): the categories set by ``consent()`` ride on every later
message as Segment's ``context.consent.categoryPreferences``, a call's ``consent=`` states them for one
message, and the Kafka transport turns them into the canonical event's ``consent`` as the collector does."""

import json
from datetime import datetime, timezone

import pytest
import spoor_sdk
from spoor_sdk import Client, Delivery
from spoor_sdk.kafka import CONSENT_PURPOSES, DEFAULT_CONSENT_CATEGORIES, canonical_event

from spoor.consent import DEFAULT_CATEGORIES, PURPOSES, category_index, statement
from spoor.events import Event

NO_MARKETING = {"analytics": True, "marketing": False, "personalisation": True}


class Recorder:
    """A transport that keeps what it is given, as the collector would receive it (the encoded bytes)."""

    def __init__(self):
        self.sent: list[dict] = []

    def send(self, messages, encoded) -> Delivery:
        self.sent += [json.loads(e) for e in encoded]
        return Delivery(accepted=len(messages))


def sent(calls) -> list[dict | None]:
    """What each message sent states: its context.consent, or None."""
    recorder = Recorder()
    client = Client(transport=recorder, flush_at_exit=False, flush_interval=0.01)
    calls(client)
    assert client.shutdown(5)
    return [m["context"].get("consent") for m in recorder.sent]


def test_every_message_after_consent_carries_the_categories_until_cleared():
    def calls(client):
        client.track("u1", "Before")
        client.consent(NO_MARKETING)
        client.track("u1", "Product Viewed", {"product_id": "P1"})
        client.page("u1", "Home")
        client.screen(None, "Cart", anonymous_id="a1")
        client.identify("u1", {"plan": "pro"})
        client.order_completed("u1", order_id="o-1", revenue="10")
        client.consent(None)
        client.track("u1", "After")
    stated = {"categoryPreferences": NO_MARKETING}
    assert sent(calls) == [None, stated, stated, stated, stated, stated, None]


def test_a_call_states_its_own_consent_or_none_and_a_context_of_its_own_is_kept():
    own = {"consent": {"categoryPreferences": {"Advertising": True}}}

    def calls(client):
        client.consent(NO_MARKETING)
        client.track("u1", "Per call", consent={"analytics": False})
        client.product_viewed("u1", product_id="P1", consent={"marketing": True})  # the commerce helpers too
        client.track("u1", "None", consent=None)
        client.track("u1", "Context", context=own)
        client.track("u2", "Client's")
    assert sent(calls) == [{"categoryPreferences": {"analytics": False}},
                           {"categoryPreferences": {"marketing": True}}, None, own["consent"],
                           {"categoryPreferences": NO_MARKETING}]


def test_the_client_keeps_a_copy_and_the_module_api_reaches_it():
    preferences = dict(NO_MARKETING)
    client = Client(transport=Recorder(), flush_at_exit=False, consent=preferences)
    preferences["marketing"] = True  # a later change by the caller does not leak in
    assert client.consent_preferences() == NO_MARKETING
    client.consent_preferences()["analytics"] = False
    assert client.consent_preferences() == NO_MARKETING
    client.shutdown(1)
    spoor_sdk.init(transport=Recorder(), flush_at_exit=False)
    try:
        assert spoor_sdk.consent_preferences() is None
        spoor_sdk.consent({"Analytics": True})
        assert spoor_sdk.consent_preferences() == {"Analytics": True}
    finally:
        spoor_sdk.shutdown(1)
        spoor_sdk.default_client = None  # as other tests expect to find the module


@pytest.mark.parametrize("bad", [["analytics"], {"analytics": "yes"}, {"analytics": 1}, {"": True}, {"x" * 65: True},
                                 {f"c{i}": True for i in range(101)}, {1: True}])
def test_what_the_collector_would_refuse_is_refused_at_the_call(bad):
    client = Client(transport=Recorder(), flush_at_exit=False)
    try:
        with pytest.raises(ValueError):
            client.consent(bad)
        with pytest.raises(ValueError):
            client.track("u1", "Viewed", consent=bad)
        with pytest.raises(ValueError):
            Client(transport=Recorder(), flush_at_exit=False, consent=bad)
        assert client.consent_preferences() is None and client.stats.queued == 0
    finally:
        client.shutdown(1)


def test_the_kafka_transport_copies_the_purposes_and_categories_of_spoor():
    assert CONSENT_PURPOSES == PURPOSES and DEFAULT_CONSENT_CATEGORIES == DEFAULT_CATEGORIES


@pytest.mark.parametrize("preferences", [
    NO_MARKETING, {"Analytics": True, "Advertising": False, "Personalization": True, "Functional": True},
    {}, {"analytics": True, "statistics": False}, {"Targeting": True}, {"unknown": True}, None])
def test_the_kafka_transport_reads_consent_as_the_collector_does(preferences):
    context = {} if preferences is None else {"consent": {"categoryPreferences": preferences}}
    message = {"type": "track", "event": "Product Viewed", "userId": "u1", "messageId": "m1",
               "timestamp": "2026-12-03T10:00:00+00:00", "context": context, "properties": {"product_id": "P1"}}
    event = canonical_event(message, datetime.now(timezone.utc), "backend")
    assert event.get("consent") == statement(context)
    assert Event.model_validate(event).consent == statement(context)  # what the worker decodes


def test_the_kafka_transport_takes_the_shops_own_categories():
    shop = {"analytics": ["C0002"], "marketing": ["C0004"], "personalisation": ["C0003"]}
    context = {"consent": {"categoryPreferences": {"C0002": True, "C0004": False, "C0003": True}}}
    message = {"type": "page", "userId": "u1", "messageId": "m1", "context": context}
    assert canonical_event(message, datetime.now(timezone.utc), "backend", shop)["consent"] == statement(
        context, category_index(shop)) == "analytics,personalisation"
