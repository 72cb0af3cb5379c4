"""A campaign with recommendations on the real PostgreSQL and Kafka: the signed payload carries the
user's list, the holdout's would-be lists are recorded, and the report counts who bought a recommended
product. Events go in through the worker's own batch write (order lines and interests included).

Time is injected: each step passes the instant the dispatcher should believe it is."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from kafka import KafkaConsumer
from sqlalchemy import select

from spoor.campaigns import campaign_dispatch
from spoor.campaigns.campaign_dispatch import CampaignStore, dispatch_due, enqueue, record_counterfactuals
from spoor.campaigns.campaign_rules import in_holdout
from spoor.campaigns.campaign_spec import parse_campaign
from spoor.campaigns.lift import lift
from spoor.campaigns.webhook_delivery import Sender, verify
from spoor.events import Event, EventKind, ProductLine
from spoor.storage.interests import fold_product_deltas
from spoor.storage.recommendations import for_user
from spoor.storage.segment_tables import CampaignDelivery
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.interests import interest_batch
from spoor.topics import create_producer, create_segment_topics
from tests.support.campaign_settings import campaign_settings
from tests.support.segments_data import put_trigger

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)
SECRET = "test-webhook-secret"
CAMPAIGN = "recs_rescue"


@pytest.fixture(scope="module")
def settings(test_settings):
    return campaign_settings(test_settings, SECRET)


@pytest.fixture(scope="module")
def producer(settings):
    producer = create_producer(settings, "test-campaign-recs")
    yield producer
    producer.close()


def write(engine, settings, events: list[Event]) -> None:
    """The worker's batch write: events (with their order lines), and the interests they add; then the
    segments runner's fold of the product rows it appended (migration 0031)."""
    day = 86_400.0
    StreamWriter(engine).write_batch([], events, interests=interest_batch(
        events, settings.interest_half_life_days * day, settings.trending_half_life_days * day))
    fold_product_deltas(engine)


def event(event_id: str, user: str, kind: EventKind, at: datetime, product: str | None = None,
          lines: tuple[str, ...] = ()) -> Event:
    return Event(event_id=event_id, kind=kind, name=kind.value, user_key=user, event_time=at, received_at=at, source="test",
                 product_id=product, category="shoes" if product else None,
                 order_id=f"o-{event_id}" if kind == EventKind.PURCHASE else None,
                 products=tuple(ProductLine(product_id=p, category="shoes", price=Decimal("25.00")) for p in lines))


def pick(percent: float, count: int, held: bool) -> list[str]:
    users = (f"rec-{i}" for i in range(10_000))
    return [u for u in users if in_holdout(CAMPAIGN, u, percent) == held][:count]


def test_recommendations_in_the_payload_and_bought_in_the_report(engine, settings, receiver):
    # Shoppers buy P1 and P2 together, and P5 alone: P2 is P1's neighbour, P5 is popular.
    write(engine, settings, [event(f"shop-{i}", f"shopper-{i}", EventKind.PURCHASE, T0 - timedelta(days=2),
                                   lines=("P1", "P2")) for i in range(5)]
          + [event(f"pop-{i}", f"shopper-{i}", EventKind.PURCHASE, T0 - timedelta(days=2), lines=("P5",))
             for i in range(5)])
    buyer, bystander, retried = pick(50, 3, held=False)
    held_buyer, held_late = pick(50, 2, held=True)
    users = (buyer, bystander, retried, held_buyer, held_late)
    write(engine, settings, [event(f"view-{u}", u, EventKind.PRODUCT_VIEW, T0 - timedelta(hours=1), product="P1")
                             for u in users])

    store = CampaignStore(engine)
    store.save(parse_campaign({"name": CAMPAIGN, "audience": {"trigger": "cart_abandonment"},
                               "action": {"webhook": receiver.url}, "delay": "30m", "holdout_percent": 50,
                               "retry_backoff": "60s", "recommendations": {"k": 3}}))
    store.launch(CAMPAIGN, T0)
    fired = T0 + timedelta(minutes=1)
    for user in users:
        put_trigger(engine, "cart_abandonment", user, "1", fired)
    assert enqueue(engine, T0 + timedelta(minutes=2)) == 5
    receiver.fail[retried] = [503]

    def dispatch(at: datetime) -> dict:
        return dispatch_due(engine, Sender(settings), at)

    assert record_counterfactuals(engine, T0 + timedelta(minutes=10)) == {}  # not due before the 30 min delay
    # Between the trigger and the send, the bystander buys P2: before the message, so it is not counted.
    write(engine, settings, [event("early", bystander, EventKind.PURCHASE, T0 + timedelta(minutes=5),
                                   lines=("P2",))])
    sent_at = T0 + timedelta(minutes=31)
    with engine.connect() as conn:  # what the recommender says at send time, independently
        expected = {u: for_user(conn, u, 3)["items"] for u in (buyer, held_buyer)}
    assert dispatch(sent_at) == {"sent": 2, "retry": 1}
    assert record_counterfactuals(engine, sent_at) == {"recorded": 2}
    assert record_counterfactuals(engine, sent_at) == {}  # once per episode

    # The retry sends the list of the first attempt, although the user's interests changed meanwhile.
    write(engine, settings, [event(f"more-{i}", retried, EventKind.PRODUCT_VIEW, sent_at, product=f"Q{i}")
                             for i in range(5)])
    assert dispatch(sent_at + timedelta(minutes=1)) == {"sent": 1}
    first, second = receiver.calls_for(retried)
    assert first["body"] == second["body"]

    with engine.connect() as conn:
        rows = {r.user_key: r for r in conn.execute(select(CampaignDelivery).where(
            CampaignDelivery.campaign == CAMPAIGN))}
    assert {u: r.status for u, r in rows.items()} == {buyer: "sent", bystander: "sent", retried: "sent",
                                                      held_buyer: "holdout", held_late: "holdout"}
    assert all(r.recommendations_k == 3 and len(r.recommended_products) == 3 for r in rows.values())
    assert rows[held_buyer].recommended_at == sent_at  # when its message would have gone out
    assert rows[held_buyer].recommendations == expected[held_buyer]
    for user in (buyer, bystander):
        (call,) = receiver.calls_for(user)
        headers = call["headers"]
        assert verify(SECRET, headers["X-Spoor-Timestamp"], call["body"], headers["X-Spoor-Signature"])
        assert call["payload"]["recommendations"] == rows[user].recommendations
        assert [i["product_id"] for i in call["payload"]["recommendations"]] == rows[user].recommended_products
    payload = receiver.calls_for(buyer)[0]["payload"]
    assert payload["recommendations"] == expected[buyer]
    # The buyer's one seed is P1 (their view) and P1's one neighbour P2: the list's top score is the cosine
    # together(P1, P2) / sqrt(popularity(P1) * popularity(P2)) (the demand term is 1 for the only candidate),
    # each weight decayed to a common instant (T0): 5 orders of P1 and P2 (4 each as a pair, 5 each as a
    # line) 2 days before, the five users' views of P1 (1 each) an hour before, the bystander's P2 at +5 min.
    half_life_s = settings.interest_half_life_days * 86_400.0

    def decayed(weight: float, at: datetime) -> float:
        return weight * 2.0 ** ((at - T0).total_seconds() / half_life_s)

    bought_at = T0 - timedelta(days=2)
    together = decayed(5 * 4.0, bought_at)
    popularity_p1 = decayed(5 * 5.0, bought_at) + decayed(5 * 1.0, T0 - timedelta(hours=1))
    popularity_p2 = decayed(5 * 5.0, bought_at) + decayed(5.0, T0 + timedelta(minutes=5))
    assert payload["recommendations"][0] == {
        "product_id": "P2", "score": pytest.approx(together / (popularity_p1 * popularity_p2) ** 0.5, abs=1e-8),
        "reason": "bought with P1"}
    for user in (held_buyer, held_late):
        assert receiver.calls_for(user) == []

    # After: the buyer's order holds P2 among its lines; the bystander buys only what was not recommended;
    # one holdout user buys P2 (top-level product id, no lines), the other after the 7-day window.
    unrecommended = next(p for p in ("P7", "P8", "P9", "Z1") if p not in rows[bystander].recommended_products)
    write(engine, settings, [
        event("bought", buyer, EventKind.PURCHASE, T0 + timedelta(days=1), lines=("P7", "P2")),
        event("other", bystander, EventKind.PURCHASE, T0 + timedelta(days=1), lines=(unrecommended,)),
        event("held", held_buyer, EventKind.PURCHASE, T0 + timedelta(days=2), product="P2"),
        event("late", held_late, EventKind.PURCHASE, T0 + timedelta(days=9), lines=("P2",))])
    report = campaign_dispatch.report(engine, CAMPAIGN)
    assert (report["treated"], report["treated_converted"]) == (3, 2)  # conversion: any purchase
    assert (report["holdout"], report["holdout_converted"]) == (2, 1)
    bought = report["recommended_products_bought"]
    assert (bought["treated"], bought["treated_bought"], bought["holdout"], bought["holdout_bought"]) == (3, 1, 2, 1)
    assert bought["window_days"] == 7
    assert bought["treated_share"] == pytest.approx(1 / 3) and bought["holdout_share"] == pytest.approx(1 / 2)
    reference = lift(3, 1, 2, 1)
    assert bought["absolute_lift_ci"] == pytest.approx(reference["absolute_lift_ci"])
    assert bought["relative_lift"] == pytest.approx(reference["relative_lift"])
    assert bought["relative_lift_ci"] == pytest.approx(reference["relative_lift_ci"])
    # A longer window takes the late holdout purchase in.
    assert campaign_dispatch.report(engine, CAMPAIGN, days=10)["recommended_products_bought"]["holdout_bought"] == 2


def test_kafka_action_carries_the_recommendations(engine, settings, producer):
    topic = f"{settings.segments_topic}.recs"
    create_segment_topics(settings.model_copy(update={"segments_topic": topic}))
    store = CampaignStore(engine)
    store.save(parse_campaign({"name": "recs_to_kafka", "audience": {"trigger": "browse_abandonment"},
                               "action": {"kafka_topic": topic}, "recommendations": {"k": 2}}))
    store.launch("recs_to_kafka", T0)
    put_trigger(engine, "browse_abandonment", "kafka-user", "1", T0 + timedelta(minutes=1))
    assert enqueue(engine, T0 + timedelta(minutes=2)) == 1
    assert dispatch_due(engine, Sender(settings, producer), T0 + timedelta(minutes=2)) == {"sent": 1}
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    (record,) = list(consumer)
    consumer.close()
    recommendations = orjson.loads(record.value)["recommendations"]
    assert len(recommendations) == 2  # an unknown user gets the fallback, still k items
    assert all(set(item) == {"product_id", "score", "reason"} for item in recommendations)
    with engine.connect() as conn:
        row = conn.execute(select(CampaignDelivery).where(CampaignDelivery.campaign == "recs_to_kafka")).one()
    assert row.recommendations == recommendations
