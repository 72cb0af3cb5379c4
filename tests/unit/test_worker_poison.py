"""One record can never stop the worker: each hostile record written straight to the events topic
becomes a bad row with its reason, and the events around it are folded as usual. Every case here
stopped the worker (an exception out of the batch, hence a fail-stop and a crash loop) before."""

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

from spoor.bad_rows import bad_row, dead_letter_row
from spoor.events import Event, EventKind
from spoor.settings import Settings
from spoor.stream_processors.analytics_tracker import AnalyticsTracker
from spoor.stream_processors.app import analytics_rules
from spoor.stream_processors.behaviour import unpack
from spoor.stream_processors.metric_agent import dead_letter_time
from spoor.stream_processors.metric_windows import MetricWindows
from spoor.stream_processors.profile import MAX_PRODUCTS_REMEMBERED, UserProfile
from spoor.stream_processors.profile_tracker import ProcessingErrorLimit, ProfileTracker, TooManyProcessingErrors
from tests.support.tracker_doubles import DictTable

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
ARRIVED = NOW.timestamp()  # the record's timestamp in Kafka (the broker's append time)


class RecordedWrites:
    def __init__(self):
        self.batches = []

    def write_batch(self, rows, events, derived, erased_users=()) -> None:
        self.batches.append({"rows": rows, "events": [e.event_id for e in events], "derived": derived})


class DeadLetters:
    def __init__(self):
        self.rows = []

    async def __call__(self, payload, field, reason, failure_type):
        encoded = bad_row("worker", field, reason, payload, failure_type=failure_type)  # must never raise
        self.rows.append(dead_letter_row(f"dlq/0/{len(self.rows)}", encoded))


def event(user: str, number: int, kind=EventKind.PAGE_VIEW, at: datetime = NOW, **fields) -> dict:
    return {"event_id": f"{user}-{number}", "kind": kind.value, "name": "x", "user_key": user,
            "event_time": at.isoformat(), "received_at": NOW.isoformat(), "source": "web", **fields}


def record(*events: dict) -> bytes:
    return orjson.dumps(list(events))


def tracker(analytics: bool = True, **kwargs) -> tuple[ProfileTracker, RecordedWrites, DeadLetters]:
    writes, dead = RecordedWrites(), DeadLetters()

    async def no_triggers(_triggers):
        pass

    rules = analytics_rules(Settings())
    tracked = ProfileTracker(DictTable(), writes, 2500, dead,
                             AnalyticsTracker(rules, 4, no_triggers) if analytics else None, **kwargs)
    return tracked, writes, dead


def events_of(tracked: ProfileTracker, user: str) -> int:
    profile_json, _ = unpack(tracked.table[user.encode()])
    return UserProfile.decode(profile_json).events


def deep(levels: int):
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("hostile, field", [
    (None, "$"),                                                             # a null value (tombstone)
    (b"", "$"),
    (b"\xff\xfe not json", "$"),
    (b"[" * 600 + b"]" * 600, "$"),                                         # deeper than orjson writes back
    (b"[" * 2000 + b"]" * 2000, "$"),                                        # deeper than orjson reads
    (record(event("bad", 1, source="s" * 65)), "source"),                    # over events.source varchar(64)
    (record({**event("bad", 2), "f" * 300: 1}), "f" * 256),                  # unknown field, name over 256
    (record(event("bad", 3, category="c" * 300)), "category"),
    (b'[' + record(event("bad", 4))[1:-2] + b', "properties": ' + b"[" * 300 + b"]" * 300 + b"}]", "properties"),
    (record(event("bad", 5, kind=EventKind.PURCHASE, revenue="1e400")), "revenue"),
    (record({**event("bad", 6), "event_time": "2026-12-02T12:00:00"}), "event_time"),  # no zone: raised in a check
])
def test_a_hostile_record_is_a_bad_row_and_the_batch_goes_on(hostile, field):
    tracked, writes, dead = tracker()
    good = record(event("u1", 1))
    applied = asyncio.run(tracked.process([(0, good, ARRIVED), (0, hostile, ARRIVED),
                                           (0, record(event("u1", 2)), ARRIVED)]))

    assert [e.event_id for _p, e in applied] == ["u1-1", "u1-2"]
    assert events_of(tracked, "u1") == 2
    assert writes.batches[-1]["events"] == ["u1-1", "u1-2"]
    assert len(dead.rows) == 1
    assert dead.rows[0]["field"] == field and dead.rows[0]["reason"]
    assert len(dead.rows[0]["field"]) <= 256  # fits dead_letters.field


def test_an_event_from_the_future_is_rejected_and_moves_no_watermark():
    tracked, writes, dead = tracker()
    asyncio.run(tracked.process([(0, record(event("u1", 1, kind=EventKind.CART_ADD, product_id="p1")), ARRIVED)]))
    future = NOW + timedelta(days=365 * 70)  # inside 1970..2100, so the old bound let it through
    asyncio.run(tracked.process([(0, record(event("u2", 1, at=future)), ARRIVED),
                                 (0, record(event("u3", 1, at=NOW + timedelta(seconds=60))), ARRIVED)]))

    assert [row["failure_type"] for row in dead.rows] == ["future_time"]
    assert dead.rows[0]["field"] == "event_time"
    assert events_of(tracked, "u3") == 1  # a minute ahead is within the allowed skew
    assert b"u2" not in tracked.table
    assert max(tracked.analytics.watermarks.values()) <= ARRIVED + 300
    assert not any(batch["derived"].triggers for batch in writes.batches)  # u1's cart is not abandoned


def test_a_state_over_its_bound_rejects_the_event_that_would_grow_it_not_the_user():
    tracked, writes, dead = tracker(analytics=False, max_state_bytes=16 * 1024)
    adds = [event("u1", n, kind=EventKind.CART_ADD, product_id=f"{n:03d}" + "p" * 250) for n in range(80)]
    asyncio.run(tracked.process([(0, record(*adds), ARRIVED), (0, record(event("u1", 999)), ARRIVED)]))

    stored = tracked.table[b"u1"]
    assert len(stored) <= 16 * 1024
    assert dead.rows and {row["failure_type"] for row in dead.rows} == {"size_violation"}
    profile = UserProfile.decode(stored)
    assert profile.events == 80 - len(dead.rows) + 1  # the later page view still counts
    assert writes.batches[-1]["events"][-1] == "u1-999"
    assert len(writes.batches[-1]["events"]) == profile.events


def test_state_stays_bounded_for_a_user_who_views_everything():
    tracked, _writes, dead = tracker()
    views = [event("u1", n, kind=EventKind.PRODUCT_VIEW, product_id=f"{n:05d}" + "p" * 250, category="c" * 256)
             for n in range(5000)]
    for start in range(0, len(views), 500):
        asyncio.run(tracked.process([(0, record(*views[start:start + 500]), ARRIVED)]))

    assert dead.rows == []
    profile_json, _ = unpack(tracked.table[b"u1"])
    profile = UserProfile.decode(profile_json)
    assert profile.row()["distinct_products_viewed"] == 5000
    assert len(profile.products_viewed) == MAX_PRODUCTS_REMEMBERED
    assert len(tracked.table[b"u1"]) < 400_000


def test_a_retried_request_as_large_as_the_collector_accepts_counts_once():
    tracked, _writes, _dead = tracker(analytics=False)
    batch = [event("u1", n) for n in range(2500)]  # SPOOR_MAX_BATCH_EVENTS, all of one user
    chunks = [record(*batch[start:start + 500]) for start in range(0, 2500, 500)]
    asyncio.run(tracked.process([(0, chunk, ARRIVED) for chunk in chunks]))
    asyncio.run(tracked.process([(0, chunk, ARRIVED) for chunk in chunks]))  # the client's retry
    assert events_of(tracked, "u1") == 2500


def test_a_run_of_processing_errors_stops_the_worker_but_one_does_not():
    limit = ProcessingErrorLimit(3)
    limit.failed()
    limit.failed()
    limit.succeeded()
    limit.failed()
    limit.failed()
    with pytest.raises(TooManyProcessingErrors):
        limit.failed()


def test_a_dead_letter_claiming_year_9999_counts_at_its_arrival_and_closes_its_window():
    row = bad_row("collector", "timestamp", "out of range", {"timestamp": "9999-12-31T23:59:59Z"})
    at, _source, _processor = dead_letter_time(row, ARRIVED)
    assert at == NOW
    windows = MetricWindows(lateness=timedelta(0))
    windows.add_dead_letter(datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc), "web", "collector")  # raised later
    windows.add_dead_letter(at, "web", "collector")
    windows.add_event(0, Event.model_validate(event("u1", 1, at=NOW + timedelta(minutes=5))))
    rows = windows.close_due()  # OverflowError: date value out of range, before
    assert sum(r["dead_letters"] for r in rows if r["resolution"] == "1m" and r["dimension"] == "global") == 1


def test_money_that_its_column_cannot_hold_is_refused_for_the_event_that_would_reach_it():
    tracked, writes, dead = tracker()
    biggest = "99999999999999.9999"  # the most one event may carry (NUMERIC(18,4))
    asyncio.run(tracked.process([(0, record(
        event("u1", 1, kind=EventKind.PURCHASE, order_id="o1", revenue=biggest),
        event("u1", 2, kind=EventKind.PURCHASE, order_id="o2", revenue=biggest),  # revenue 2e14: overflow
        event("u1", 3, kind=EventKind.CART_ADD, product_id="p", price=biggest, quantity=1_000_000),
        event("u1", 4)), ARRIVED)]))

    assert [(row["field"], row["failure_type"]) for row in dead.rows] == [("$", "size_violation")] * 2
    profile_json, _ = unpack(tracked.table[b"u1"])
    profile = UserProfile.decode(profile_json)
    assert (profile.events, profile.orders, str(profile.revenue), profile.cart_value) == (2, 1, biggest, 0)
    assert writes.batches[-1]["events"] == ["u1-1", "u1-4"]


def test_a_metric_window_of_many_big_orders_saturates_instead_of_failing_its_write():
    windows = MetricWindows(lateness=timedelta(0))
    for n in range(3):
        windows.add_event(0, Event.model_validate(event(f"u{n}", n, kind=EventKind.PURCHASE, order_id=f"o{n}",
                                                        revenue="99999999999999.9999")))
    windows.add_event(0, Event.model_validate(event("u9", 9, at=NOW + timedelta(minutes=5))))
    rows = [r for r in windows.close_due() if r["resolution"] == "1m" and r["dimension"] == "global"]
    assert rows[0]["orders"] == 3 and rows[0]["revenue"] == Decimal("99999999999999.9999")


def test_settings_refuse_a_dedupe_window_smaller_than_a_request():
    with pytest.raises(ValueError, match="SPOOR_DEDUPE_WINDOW"):
        Settings(dedupe_window=512, max_batch_events=2500)
