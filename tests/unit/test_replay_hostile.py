"""Hostile CSV rows (a file is an input surface too): the mapping never raises for one row; every
row that cannot be mapped is counted under its reason, and every message made is one the collector
accepts in size."""

from hypothesis import given, settings
from hypothesis import strategies as st

from spoor.cli.replay import HEADERS, Format, Tally, online_retail_messages, rees46_messages

CELL = st.one_of(st.text(max_size=40), st.sampled_from(["", "nan", "inf", "-1", "1e400", "9" * 400, "2010-12-01 08:26",
                                                        "9999-12-31 23:59:59 UTC", "0001-01-01 00:00:00 UTC",
                                                        "C536379", "\x00", "\ud800"]))


def rows_for(fmt: Format):
    return st.lists(st.fixed_dictionaries({column: CELL for column in HEADERS[fmt]}), max_size=30)


@settings(max_examples=300, deadline=None)
@given(rows_for(Format.ONLINE_RETAIL))
def test_online_retail_rows_are_mapped_or_counted(rows):
    tally = Tally()
    messages = online_retail_messages(list(enumerate(rows, start=2)), tally)
    assert len(messages) <= len({row["InvoiceNo"] for row in rows})  # at most one message per invoice
    if not messages:
        assert sum(tally.skipped.values()) == len(rows) or not rows
    for message in messages:
        assert message["messageId"] and message["timestamp"]


@settings(max_examples=300, deadline=None)
@given(rows_for(Format.REES46))
def test_rees46_rows_are_mapped_or_counted(rows):
    tally = Tally()
    messages = list(rees46_messages(list(enumerate(rows, start=2)), tally))
    assert len(messages) + sum(tally.skipped.values()) == len(rows)
