"""Consent per purpose: a message's categoryPreferences read into a statement (spoor/consent.py, through the
collector's normalize), and the worker's gate (stream_processors/consent_gate.py) with its precedence rules,
judged against in-memory rows of user_consent."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from spoor.consent import (
    ANALYTICS,
    DENIED,
    MARKETING,
    PERSONALISATION,
    PURPOSES,
    STATEMENTS,
    WITHHELD,
    category_index,
    statement,
)
from spoor.events import Event, EventKind
from spoor.ingest.normalize import InvalidEvent, normalize
from spoor.storage.consent_store import StoredConsent
from spoor.stream_processors.consent_gate import ConsentGate, ConsentReads

NOW = datetime(2026, 12, 3, 12, tzinfo=timezone.utc)
ALL = "analytics,marketing,personalisation"
NO_ANALYTICS = "marketing,personalisation"


def prefs(**categories) -> dict:
    return {"consent": {"categoryPreferences": categories}}


# -- statement --------------------------------------------------------------------------------------------

def test_segment_shape_is_read_case_insensitively_per_purpose():
    said = statement(prefs(Analytics=False, Advertising=True, Personalization=True, Functional=True))
    assert said == "marketing,personalisation"


def test_no_consent_object_or_no_category_preferences_states_nothing():
    assert statement({}) is None
    assert statement({"consent": {}}) is None
    assert statement({"consent": {"categoryPreferences": None}}) is None
    assert statement("not a context") is None


def test_empty_preferences_deny_everything_and_unnamed_purposes_are_not_granted():
    assert statement(prefs()) == ""
    assert statement(prefs(analytics=True)) == "analytics"
    assert DENIED[""] == set(PURPOSES) and DENIED["analytics"] == {MARKETING, PERSONALISATION}
    assert len(STATEMENTS) == 8 and DENIED[ALL] == set()


def test_two_categories_of_one_purpose_disagreeing_deny_it():
    assert statement(prefs(analytics=True, statistics=False)) == ""
    assert statement(prefs(analytics=True, statistics=True)) == "analytics"


def test_the_operator_maps_their_consent_managers_category_ids():
    index = category_index({"analytics": ["C0002"], "marketing": ["C0004"], "personalisation": ["C0003"]})
    said = statement(prefs(C0001=True, C0002=True, C0003=False, C0004=True), index)
    assert said == "analytics,marketing"
    assert statement(prefs(Analytics=True), index) == ""  # not one of this shop's ids


@pytest.mark.parametrize("context, field", [
    ({"consent": "yes"}, "context.consent"),
    ({"consent": {"categoryPreferences": ["analytics"]}}, "context.consent.categoryPreferences"),
    ({"consent": {"categoryPreferences": {"analytics": "true"}}}, "context.consent.categoryPreferences.analytics"),
    ({"consent": {"categoryPreferences": {"analytics": 1}}}, "context.consent.categoryPreferences.analytics"),
    ({"consent": {"categoryPreferences": {f"c{i}": True for i in range(101)}}}, "context.consent.categoryPreferences"),
])
def test_hostile_preferences_are_a_bad_row_naming_the_field(context, field):
    message = {"type": "track", "event": "Product Viewed", "userId": "u1", "context": context}
    with pytest.raises(InvalidEvent) as caught:
        normalize(message, received_at=NOW, source="web")
    assert caught.value.field == field


def test_an_event_holds_only_a_canonical_statement():
    with pytest.raises(ValueError):
        Event(event_id="e", kind=EventKind.CUSTOM, name="x", user_key="u", event_time=NOW, received_at=NOW,
              consent="personalisation,analytics")


def test_the_collector_carries_the_statement_on_the_event_and_through_its_json():
    message = {"type": "track", "event": "Product Viewed", "userId": "u1", **{"context": prefs(
        analytics=True, marketing=False, personalisation=True)}}
    event = normalize(message, received_at=NOW, source="web")
    assert event.consent == "analytics,personalisation"
    assert Event.from_json(event.to_json()).consent == event.consent
    silent = normalize({"type": "track", "event": "x", "userId": "u1"}, received_at=NOW, source="web")
    assert silent.consent is None and b"consent" not in silent.to_json()


# -- the worker's gate ------------------------------------------------------------------------------------

class Table:
    """user_consent in memory, with the reads the gate makes counted."""

    def __init__(self):
        self.rows: dict[str, StoredConsent] = {}
        self.changed_at: dict[str, datetime] = {}
        self.now = NOW
        self.calls = {"withdrawn": 0, "changed": 0, "users": 0, "record": 0}
        self.recorded: list = []

    def put(self, row: StoredConsent):
        self.now += timedelta(seconds=1)
        self.rows[row.user_key] = row
        self.changed_at[row.user_key] = self.now

    def reads(self) -> ConsentReads:
        def withdrawn(limit):
            self.calls["withdrawn"] += 1
            return [r for r in self.rows.values() if r.withdraws_something][:limit], self.now

        def changed(since):
            self.calls["changed"] += 1
            return [self.rows[k] for k, at in self.changed_at.items() if at >= since], self.now

        def users(keys):
            self.calls["users"] += 1
            return [self.rows[k] for k in keys if k in self.rows]

        def record(statements):
            self.calls["record"] += 1
            self.recorded.append(statements)
            for key, said, _at in statements:
                old = self.rows.get(key)
                self.put(StoredConsent(key, old.recorded if old else frozenset(), DENIED[said]))
        return ConsentReads(withdrawn, changed, users, record)


def event(user: str, n: int, consent: str | None = None) -> tuple[int, Event]:
    return 0, Event(event_id=f"{user}-{n}", kind=EventKind.PRODUCT_VIEW, name="Product Viewed", user_key=user,
                    event_time=NOW, received_at=NOW + timedelta(seconds=n), consent=consent)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def gate_for(table: Table, max_users: int = 100) -> tuple[ConsentGate, Clock]:
    clock = Clock()
    return ConsentGate(table.reads(), max_users=max_users, refresh_s=2.0, clock=clock), clock


def run(gate: ConsentGate, events: list) -> tuple[list[str], list[str], dict]:
    async def go():
        await gate.refresh()
        kept, withheld, statements = await gate.gate(events)
        await gate.record(statements)
        return [e.event_id for _, e in kept], [e.event_id for _, e in withheld], statements
    return asyncio.run(go())


def test_an_events_own_statement_governs_it_and_is_remembered_for_events_that_state_nothing():
    table = Table()
    gate, _ = gate_for(table)
    kept, withheld, statements = run(gate, [event("a", 1), event("a", 2, NO_ANALYTICS), event("a", 3),
                                            event("a", 4, ALL), event("a", 5)])
    assert kept == ["a-1", "a-4", "a-5"] and withheld == ["a-2", "a-3"]
    assert statements["a"][0] == ALL  # the latest change is what is recorded for campaigns and recommendations
    assert table.rows["a"].page == frozenset()


def test_a_recorded_withdrawal_wins_over_the_pages_consent():
    table = Table()
    table.put(StoredConsent("b", frozenset({ANALYTICS}), None))
    gate, _ = gate_for(table)
    kept, withheld, _ = run(gate, [event("b", 1, ALL), event("b", 2)])
    assert kept == [] and withheld == ["b-1", "b-2"]


def test_a_recorded_grant_does_not_override_what_the_page_says():
    table = Table()
    gate, _ = gate_for(table)
    kept, withheld, _ = run(gate, [event("c", 1, NO_ANALYTICS)])  # recorded grant = no withdrawal row
    assert withheld == ["c-1"]


def test_a_withdrawal_recorded_while_running_holds_after_the_refresh_interval_without_a_query_per_event():
    table = Table()
    gate, clock = gate_for(table)
    assert run(gate, [event("d", 1)])[0] == ["d-1"]
    table.put(StoredConsent("d", frozenset(PURPOSES), None))  # spoor users consent d --opt-out
    clock.t = 1.0
    assert run(gate, [event("d", 2)])[0] == ["d-2"]  # not read yet: within SPOOR_CONSENT_REFRESH_S
    clock.t = 2.5
    assert run(gate, [event("d", 3), event("d", 4, ALL)])[1] == ["d-3", "d-4"]
    table.put(StoredConsent("d", frozenset(), None))  # --opt-in
    clock.t = 5.0
    assert run(gate, [event("d", 5)])[0] == ["d-5"]
    assert table.calls["withdrawn"] == 1 and table.calls["changed"] == 2 and table.calls["users"] == 0


def test_marketing_and_personalisation_statements_are_recorded_once_per_change_and_keep_events_profiled():
    table = Table()
    gate, clock = gate_for(table)
    no_marketing = "analytics,personalisation"
    kept, withheld, statements = run(gate, [event("e", 1, no_marketing), event("e", 2, no_marketing)])
    assert kept == ["e-1", "e-2"] and withheld == []
    assert list(statements) == ["e"] and table.rows["e"].page == {MARKETING}
    clock.t = 3.0
    assert run(gate, [event("e", 3, no_marketing)])[2] == {}  # unchanged: nothing to write
    assert table.calls["record"] == 1
    all_granted_anew = run(gate, [event("f", 1, ALL)])[2]
    assert all_granted_anew == {}  # no row withdraws anything for f: nothing to record


def test_past_its_bound_the_book_asks_for_the_batchs_unknown_users_once_per_batch():
    table = Table()
    for i in range(5):
        table.put(StoredConsent(f"u{i}", frozenset({ANALYTICS}), None))
    gate, _ = gate_for(table, max_users=3)
    kept, withheld, _ = run(gate, [event(f"u{i}", n) for n in range(3) for i in range(6)])
    assert sorted(kept) == ["u5-0", "u5-1", "u5-2"] and len(withheld) == 15
    assert table.calls["users"] == 1 and len(gate.book) == 3 and not gate.complete


def test_withheld_events_are_counted_by_purpose():
    before = WITHHELD.labels(ANALYTICS)._value.get()
    gate, _ = gate_for(Table())
    run(gate, [event("g", 1, NO_ANALYTICS), event("g", 2)])
    assert WITHHELD.labels(ANALYTICS)._value.get() - before == 2
    assert DENIED["analytics,marketing"] == {PERSONALISATION}
