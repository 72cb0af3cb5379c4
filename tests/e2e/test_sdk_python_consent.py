"""The Python SDK's consent option (sdk/python) end to end: events sent by ``spoor_sdk.Client`` with a
purpose withheld, through the real collector (and the SDK's Kafka transport), Kafka, the worker,
PostgreSQL, `spoor segments run` and `spoor campaigns run`, are used as tests/e2e/test_consent_matrix.py
expects of a page that states the same (its fixtures and helpers are reused):

| shopper           | stated by                         | analytics | marketing |
| full              | the client's ``consent()``        | yes       | yes       |
| no_marketing      | the call's ``consent=``           | yes       | no: the campaign's delivery is opted_out |
| no_analytics      | ``consent()`` changed             | no: no profile, no segment, no delivery | |
| kafka_no_marketing| ``consent()``, Kafka transport    | yes       | no        |
"""

import pytest
from spoor_sdk import Client, KafkaTransport

from tests.e2e.test_consent_matrix import ALL, keys, processes, rows, settings, spoor  # noqa: F401 (fixtures)
from tests.support.local_stack import run_id, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
SEGMENT, CAMPAIGN = "sdk_viewers", "sdk_consent"


def test_the_sdks_consent_is_used_as_a_pages(settings, collector, write_key, engine, start_process,  # noqa: F811
                                            receiver, processes):  # noqa: F811
    start_process("worker", consent_refresh_s=1.0)
    spoor(settings, "segments", "define", "-", stdin=f"name: {SEGMENT}\nwhere: 'did \"Product Viewed\" in last 1d'\n")
    spoor(settings, "segments", "launch", SEGMENT)
    spoor(settings, "campaigns", "define", "-", stdin=f"""
name: {CAMPAIGN}
audience: {{segment_entry: {SEGMENT}}}
action: {{webhook: "{receiver.url}"}}
holdout_percent: 0
""")
    spoor(settings, "campaigns", "launch", CAMPAIGN)
    run = run_id(6)
    full, no_marketing, no_analytics, kafka_no_marketing = (
        f"sdk-{name}-{run}" for name in ("full", "no-marketing", "no-analytics", "kafka-no-marketing"))
    shoppers = [full, no_marketing, no_analytics, kafka_no_marketing]

    client = Client(write_key, collector, flush_at_exit=False, flush_interval=0.1)
    client.consent(ALL)
    client.product_viewed(full, product_id="SKU-0", price=12, category="mugs")
    client.product_viewed(no_marketing, product_id="SKU-0", price=12, consent={**ALL, "Advertising": False})
    client.consent({**ALL, "Analytics": False})
    client.product_viewed(no_analytics, product_id="SKU-0", price=12)
    assert client.shutdown(30) and client.stats.sent == 3
    kafka = Client(transport=KafkaTransport(settings.kafka_bootstrap, topic=settings.events_topic), flush_at_exit=False,
                   flush_interval=0.1, consent={**ALL, "Advertising": False})
    kafka.product_viewed(kafka_no_marketing, product_id="SKU-0", price=12)
    assert kafka.shutdown(30) and kafka.stats.sent == 1

    # Analytics: only the consenting shoppers are profiled and enter the segment.
    profiled = {full, no_marketing, kafka_no_marketing}
    wait_until(lambda: keys(engine, "user_profiles", shoppers) == profiled, 60, "the consenting profiles")
    wait_until(lambda: keys(engine, "segment_members", shoppers) == profiled, 60, "the segment's members")
    assert keys(engine, "events", shoppers) == profiled

    # Marketing: the campaign acts on the shopper who consented; the withdrawals are opted_out, nothing sent.
    def settled():
        found = dict(rows(engine, "SELECT user_key, status FROM campaign_deliveries WHERE campaign = :c", c=CAMPAIGN))
        return found if found.keys() == profiled and "pending" not in found.values() else None

    assert wait_until(settled, 90, "every delivery decided") == {
        full: "sent", no_marketing: "opted_out", kafka_no_marketing: "opted_out"}
    assert {call["payload"]["user_key"] for call in receiver.calls} == {full}
    # What the worker recorded of the statements that withdraw something (user_consent's page columns).
    assert set(rows(engine, "SELECT user_key, page_analytics, page_marketing, page_personalisation FROM user_consent "
                            "WHERE user_key = ANY(:u)", u=shoppers)) == {
        (no_marketing, True, False, True), (kafka_no_marketing, True, False, True), (no_analytics, False, True, True)}
