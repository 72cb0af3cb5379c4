"""Event-time business-metric windows: pure logic, no broker."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from spoor.events import Event, EventKind, ProductLine
from spoor.stream_processors.metric_windows import DEAD_LETTER_PARTITION, MetricWindows

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
_ids = iter(range(10 ** 6))


def event(kind: str, user: str, seconds: float, source: str = "web", **fields) -> Event:
    at = T0 + timedelta(seconds=seconds)
    return Event(event_id=f"e{next(_ids)}", kind=kind, name=kind, user_key=user, event_time=at,
                 received_at=at, source=source, **fields)


def rows_by(rows, resolution, dimension):
    return [r for r in rows if r["resolution"] == resolution and r["dimension"] == dimension]


def test_window_closes_when_the_watermark_passes_its_end_and_counts_are_exact():
    windows = MetricWindows(lateness=timedelta(seconds=30))
    windows.add_event(0, event("product_view", "u1", 0, category="shoes"))
    windows.add_event(0, event("product_view", "u1", 2, category="shoes"))
    windows.add_event(1, event("cart_add", "u2", 3, category="shoes"))
    windows.add_event(1, event("product_view", "u2", 4, source="ios"))
    windows.add_event(1, event("purchase", "u2", 5, revenue=Decimal("19.99")))
    assert windows.close_due() == []  # watermark 10:00:05 - 30 s
    windows.add_event(0, event("page_view", "u3", 89))  # watermark 10:00:59: 10:00-10:01 still open
    assert windows.close_due() == []
    windows.add_event(0, event("page_view", "u3", 91))  # watermark 10:01:01: it closes on partition 0
    rows = windows.close_due()
    assert {(r["resolution"], r["partition"]) for r in rows} == {("1m", 0)}
    rows += windows.close_due(idle={1})  # partition 1 has nothing more to read: it follows partition 0
    assert {r["resolution"] for r in rows} == {"1m"}
    p0, p1 = sorted(rows_by(rows, "1m", "global"), key=lambda r: r["partition"])
    assert (p0["events"], p0["product_views"], p0["active_users"], p0["viewers"]) == (2, 2, 1, 1)
    assert (p1["events"], p1["cart_adds"], p1["orders"], p1["revenue"], p1["buyers"]) == (3, 1, 1, Decimal("19.99"), 1)
    assert p1["sessions"] == 1 and p1["window_start"] == T0 and p1["window_end"] == T0 + timedelta(minutes=1)
    assert [r["events"] for r in rows_by(rows, "1m", "source:ios")] == [1]
    assert sum(r["events"] for r in rows_by(rows, "1m", "category:shoes")) == 3
    assert not p0["partial"] and p1["partial"]  # partition 1's first event came 3 s into the window


def test_a_partition_read_behind_the_others_loses_nothing():
    windows = MetricWindows(lateness=timedelta(seconds=10))
    for minute in range(10):  # partition 0 is read far ahead of partition 1 (a consumer catching up)
        windows.add_event(0, event("page_view", "a", minute * 60))
    windows.close_due()
    windows.add_event(1, event("page_view", "b", 0))
    windows.add_event(1, event("page_view", "b", 70))
    assert windows.late_events == 0
    rows = windows.close_due()
    assert [(r["partition"], r["events"]) for r in rows_by(rows, "1m", "global")] == [(1, 1)]


def test_late_events_miss_closed_windows_only():
    windows = MetricWindows(lateness=timedelta(seconds=0))
    windows.add_event(0, event("page_view", "u1", 10))
    windows.add_event(0, event("page_view", "u1", 130))
    windows.close_due()
    windows.add_event(0, event("page_view", "u1", 20))  # its 1-minute window is gone; 5 and 60 are open
    assert windows.late_events == 1
    windows.add_event(0, event("page_view", "u1", 4000))
    rows = windows.close_due()
    assert windows.late_events == 1
    [five] = rows_by(rows, "5m", "global")
    assert five["events"] == 3 and five["active_users"] == 1


def test_rollups_count_distinct_users_over_the_whole_window():
    windows = MetricWindows(lateness=timedelta(0))
    for minute in range(5):
        windows.add_event(0, event("page_view", "same-user", minute * 60 + 1))
    windows.add_event(0, event("page_view", "other", 3601))
    rows = windows.close_due()
    assert sum(r["active_users"] for r in rows_by(rows, "1m", "global")) == 5
    assert rows_by(rows, "5m", "global")[0]["active_users"] == 1
    assert rows_by(rows, "60m", "global")[0]["active_users"] == 1


def test_a_window_open_before_the_first_event_is_partial():
    windows = MetricWindows(lateness=timedelta(0))
    windows.add_event(0, event("page_view", "u1", 30))
    windows.add_event(0, event("page_view", "u1", 61))
    [row] = rows_by(windows.close_due(), "1m", "global")
    assert row["partial"] and row["window_start"] == T0


def test_dead_letters_and_category_cap():
    windows = MetricWindows(lateness=timedelta(0), max_categories=2)
    for i, category in enumerate(["a", "b", "c", "d"]):
        windows.add_event(0, event("product_view", f"u{i}", i, category=category))
    windows.add_dead_letter(T0 + timedelta(seconds=5), "web", "collector")
    windows.add_dead_letter(T0 + timedelta(seconds=6), None, "worker")
    windows.add_event(0, event("page_view", "u1", 61))  # dead letters follow the newest event time
    rows = windows.close_due()
    assert sorted(r["dimension"] for r in rows_by(rows, "1m", "global")) == ["global", "global"]
    assert {r["dimension"] for r in rows if r["dimension"].startswith("category:")} == {
        "category:a", "category:b", "category:other"}
    [dead] = [r for r in rows_by(rows, "1m", "global") if r["partition"] == DEAD_LETTER_PARTITION]
    assert (dead["dead_letters"], dead["collector_rejects"], dead["events"]) == (2, 1, 0)


def test_every_event_kind_is_counted_refunds_included():
    windows = MetricWindows(lateness=timedelta(seconds=0))
    for offset, kind in enumerate(EventKind):
        windows.add_event(0, event(kind.value, "u1", offset, revenue=Decimal("5") if kind == "refund" else None))
    windows.add_event(0, event("page_view", "u1", 120))
    (row,) = rows_by(windows.close_due(), "1m", "global")
    assert row["events"] == len(EventKind)
    assert row["refunds"] == 1 and row["orders"] == 1
    assert row["revenue"] == 0  # revenue counts orders; a refund is its own count, not negative revenue


def test_a_batch_added_at_once_counts_what_its_events_added_one_at_a_time_count():
    """add_events groups a batch's events by partition, window and dimensions before adding them: the same
    rows (late events, partial windows, the category cap's admission order, roll-ups) as one at a time."""
    kinds = list(EventKind)
    stream = []
    for i in range(600):
        seconds = i * 1.7 - (200 if i % 23 == 0 else 0)  # every 23rd is late for its minute, some for their hour
        lines = [ProductLine(product_id=f"p{i % 7}", category=f"line-{i % 9}")] if i % 4 == 0 else []
        kind = kinds[i % len(kinds)].value
        stream.append((i % 3, event(kind, f"u{i % 40}", seconds, source=("web", "ios")[i % 2], category=f"c{i % 11}",
                                    products=lines, session_id=f"s{i % 13}" if i % 5 else None,
                                    revenue=Decimal(i) / 100 if kind in ("purchase", "refund") else None)))
    one, batched = MetricWindows(lateness=timedelta(seconds=20), max_categories=6), \
        MetricWindows(lateness=timedelta(seconds=20), max_categories=6)
    rows_one, rows_batched = [], []
    for start in range(0, len(stream), 75):
        for partition, each in stream[start:start + 75]:
            one.add_event(partition, each)
        batched.add_events(stream[start:start + 75])
        rows_one += one.close_due(idle={2} if start > 300 else set())
        rows_batched += batched.close_due(idle={2} if start > 300 else set())
    rows_one += one.close_due(idle={0, 1, 2})
    rows_batched += batched.close_due(idle={0, 1, 2})
    assert one.late_events > 0 and any(row["partial"] is False for row in rows_one)
    assert {row["dimension"] for row in rows_one} >= {"category:other", "source:ios", "category:line-0"}
    assert rows_batched == rows_one
    assert (batched.late_events, batched.categories, batched.first, batched.newest, batched.open) == \
        (one.late_events, one.categories, one.first, one.newest, one.open)
