"""Partition arithmetic of the retention job (storage/retention.py) and its settings' bounds."""

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from spoor.settings import Settings
from spoor.storage.retention import (
    cutoff,
    expired,
    next_start,
    parse_partition_name,
    partition_name,
    starts_ahead,
    stores,
    unit_start,
)

UTC = timezone.utc


def at(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_unit_start_is_utc_midnight_or_first_of_month():
    moment = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))  # 2026-11-30 22:30 UTC
    assert unit_start(moment, "day") == at(2026, 11, 30)
    assert unit_start(moment, "month") == at(2026, 11, 1)
    assert unit_start(at(2026, 12, 31, 23, 59, 59, 999999), "month") == at(2026, 12, 1)


def test_unit_start_refuses_naive_times_and_unknown_units():
    with pytest.raises(ValueError, match="naive"):
        unit_start(datetime(2026, 1, 1), "day")
    with pytest.raises(ValueError, match="unit"):
        unit_start(at(2026, 1, 1), "week")


def test_next_start_crosses_months_years_and_leap_days():
    assert next_start(at(2026, 12, 1), "month") == at(2027, 1, 1)
    assert next_start(at(2026, 11, 1), "month", 14) == at(2028, 1, 1)
    assert next_start(at(2028, 2, 28), "day") == at(2028, 2, 29)
    assert next_start(at(2027, 2, 28), "day") == at(2027, 3, 1)
    assert next_start(at(2026, 12, 31), "day") == at(2027, 1, 1)


@pytest.mark.parametrize("start, unit, name", [(at(2026, 12, 1), "month", "events_p202612"),
                                               (at(2027, 1, 9), "day", "events_p20270109")])
def test_partition_names_read_back(start, unit, name):
    assert partition_name("events", start, unit) == name
    assert parse_partition_name("events", name, unit) == start


@pytest.mark.parametrize("name", ["events_default", "events_p2026", "events_p202613", "events_p20261232",
                                  "events_p2026120", "other_p202612", "events_p202612_old", "xevents_p202612"])
def test_names_the_job_did_not_make_are_left_alone(name):
    assert parse_partition_name("events", name, "month") is None
    assert parse_partition_name("events", name, "day") is None


def test_a_partition_expires_once_its_whole_range_is_past_retention():
    december = at(2025, 12, 1)
    # The range ends 2026-01-01: with 30 days' retention, it goes from 2026-01-31 00:00 on.
    assert not expired(december, "month", at(2026, 1, 30, 23, 59, 59), 30)
    assert expired(december, "month", at(2026, 1, 31), 30)
    day = at(2026, 11, 4)
    assert not expired(day, "day", at(2026, 12, 2, 23, 59), 28)
    assert expired(day, "day", at(2026, 12, 3), 28)


def test_a_row_is_kept_at_least_its_retention_and_at_most_one_partition_more():
    now = at(2026, 12, 3, 12)
    for days in (31, 395):
        limit = cutoff(now, days)
        holding = unit_start(limit, "month")  # the partition holding the oldest row still in retention
        assert not expired(holding, "month", now, days)
        assert expired(next_start(holding, "month", -1), "month", now, days)
        assert now - holding <= timedelta(days=days + 31)


def test_cutoff_refuses_less_than_a_day():
    with pytest.raises(ValueError):
        cutoff(at(2026, 1, 1), 0)


def test_partitions_ahead_start_at_the_current_one():
    assert starts_ahead(at(2026, 12, 3, 8), "month", 3) == [at(2026, 12, 1), at(2027, 1, 1), at(2027, 2, 1),
                                                            at(2027, 3, 1)]
    assert starts_ahead(at(2026, 12, 31, 23), "day", 1) == [at(2026, 12, 31), at(2027, 1, 1)]


def test_defaults_per_store():
    by_name = {store.name: store for store in stores(Settings())}
    assert {name: store.days for name, store in by_name.items()} == {
        "events": 395, "dead_letters": 28, "sessions": 395, "campaign_deliveries": 730, "order_attribution": 395}
    assert by_name["events"].unit == "month" and by_name["dead_letters"].unit == "day"
    assert by_name["sessions"].tables == ("sessions",)  # its journey is in its row (migration 0033)
    assert by_name["campaign_deliveries"].tables == ("campaign_deliveries", "campaign_attempts")
    # a session is rewritten until its inactivity gap (lateness, for a client session) and the lateness have passed
    assert by_name["sessions"].margin == timedelta(hours=12) and not by_name["events"].margin


def test_a_partition_of_rows_still_updated_is_kept_for_the_margin():
    january = at(2026, 1, 1)  # ends 2026-02-01: with 30 days, it goes from 2026-03-03 00:00, 12 hours later
    assert not expired(january, "month", at(2026, 3, 3, 11, 59), 30, timedelta(hours=12))
    assert expired(january, "month", at(2026, 3, 3, 12), 30, timedelta(hours=12))


@pytest.mark.parametrize("name, value", [
    ("retention_events_days", "0"), ("retention_events_days", "-5"), ("retention_events_days", "30"),
    ("retention_events_days", "1e9"), ("retention_events_days", "abc"), ("retention_events_days", "36501"),
    ("retention_dead_letters_days", "0"), ("retention_dead_letters_days", "1.5"),
    ("retention_sessions_days", "7"), ("retention_deliveries_days", "99999999999"),
    ("retention_order_attribution_days", "30"), ("retention_order_attribution_days", "0"),
    ("retention_interval_s", "0"), ("retention_interval_s", "-1"), ("retention_interval_s", "nan"),
    ("retention_interval_s", "1e12"),
])
def test_hostile_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(f"SPOOR_{name.upper()}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_within_bounds_are_taken(monkeypatch):
    monkeypatch.setenv("SPOOR_RETENTION_DEAD_LETTERS_DAYS", "1")
    monkeypatch.setenv("SPOOR_RETENTION_EVENTS_DAYS", "36500")
    settings = Settings()
    assert settings.retention_dead_letters_days == 1 and settings.retention_events_days == 36500


def test_a_run_that_cannot_reach_postgresql_never_fails_the_runners_turn():
    from prometheus_client import REGISTRY
    from sqlalchemy import create_engine

    from spoor.storage.retention import RetentionTurn

    engine = create_engine("postgresql+psycopg2://spoor:spoor@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2})
    turn = RetentionTurn(engine, Settings())
    before = REGISTRY.get_sample_value("spoor_retention_failures_total", {"store": "all"}) or 0
    assert turn() is None  # no exception: the segments' own work goes on
    assert REGISTRY.get_sample_value("spoor_retention_failures_total", {"store": "all"}) == before + 1
    assert turn() is None  # not due again before RETRY_S: nothing tried
    assert REGISTRY.get_sample_value("spoor_retention_failures_total", {"store": "all"}) == before + 1
    engine.dispose()
