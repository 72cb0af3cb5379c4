"""Identity resolution in the worker (stream_processors/identities.py), with its Kafka and PostgreSQL
replaced by a loop that feeds every record the worker sends back to it on the key's partition (as
Kafka would) and a record of what each batch writes. The answers come from folding the same events
with their ids joined first."""

import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from spoor.events import Event, EventKind, encode_events, erasure_record, identity_link_record
from spoor.stream_processors.identities import IdentityGraph, candidate_ids
from spoor.stream_processors.profile import UserProfile
from spoor.stream_processors.profile_tracker import ProfileTracker
from spoor.topics import partition_for
from tests.support.tracker_doubles import DictTable

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
PARTITIONS = 4
DEDUPE = 512


class Database:
    """What the batches wrote, with merges applied as storage/identities.move_rows does for profiles."""

    def __init__(self):
        self.profiles: dict[str, dict] = {}
        self.links: list[dict] = []
        self.events: dict[str, str] = {}  # event id -> user key

    def write_batch(self, rows, events, derived, erased_users=(), merges=(), links=()) -> None:
        for from_key, into_key in merges:
            self.profiles.pop(from_key, None)
            for event_id, user_key in self.events.items():
                if user_key == from_key:
                    self.events[event_id] = into_key
        self.links += links
        for event in events:
            self.events.setdefault(event.event_id, event.user_key)
        for row in rows:
            self.profiles[row["user_key"]] = row


class Crash(Exception):
    pass


class Worker:
    """One tracker owning every partition; what it sends is read back in the next batches."""

    def __init__(self, max_ids: int = 25, denylist=("null", "undefined"), crash_at_send: int | None = None):
        self.crash_at_send = crash_at_send  # the n-th send fails, as if the process died there
        self.sends = 0
        self.db = Database()
        self.sent: list[tuple[int, bytes]] = []
        self.graph = IdentityGraph(DictTable(), max_ids, denylist)
        self.tracker = ProfileTracker(DictTable(), self.db, DEDUPE, self._bad_row, identities=self.graph,
                                      send_record=self._send)
        self.bad_rows: list = []
        self.batches: list[list] = []

    async def _send(self, key: str, value: bytes):
        self.sends += 1
        if self.sends == self.crash_at_send:
            raise Crash(f"send {self.sends}")
        self.sent.append((partition_for(key, PARTITIONS), value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _bad_row(self, payload, field, reason, failure_type):
        self.bad_rows.append((field, reason))

    def run(self, records: list[tuple[int, bytes]]) -> None:
        """Process ``records`` as one batch, then what the worker sent, until nothing is left. A batch
        that crashed is processed again (its offsets were not committed); what it sent stays sent."""
        batch = records
        while batch:
            self.batches.append(batch)
            try:
                asyncio.run(self.tracker.process(batch))
            except Crash:
                self.sent = [*batch, *self.sent]  # read again from the last commit, then what was sent
            batch, self.sent = self.sent, []

    def step(self, records: list) -> list:
        """One batch alone; returns what it sent instead of reading it back (to replay other orders)."""
        asyncio.run(self.tracker.process(records))
        sent, self.sent = self.sent, []
        return sent

    def profile(self, user_key: str) -> dict | None:
        raw = self.tracker.table.get(user_key.encode())
        return UserProfile.decode(raw).row() if raw else None


def event(number: int, kind: EventKind, *, user_id: str | None = None, anonymous_id: str | None = None,
          previous_id: str | None = None, minutes: float = 0, **fields) -> Event:
    at = T0 + timedelta(minutes=minutes)
    return Event(event_id=f"e{number}", kind=kind, name=kind.value, user_key=user_id or anonymous_id,
                 user_id=user_id, anonymous_id=anonymous_id, previous_id=previous_id, event_time=at,
                 received_at=at, **fields)


def record(*events: Event) -> tuple[int, bytes]:
    return partition_for(events[0].user_key, PARTITIONS), encode_events(list(events))


def joined_profile(user_key: str, events: list[Event]) -> dict:
    """The independent answer: every event folded into one profile, its ids joined first."""
    profile = UserProfile(user_key)
    for e in sorted(events, key=lambda e: e.event_time):
        profile.apply(e.model_copy(update={"user_key": user_key}), DEDUPE)
    return profile.row()


def browse_then_buy(anonymous_id: str, user_id: str, first: int = 0) -> list[Event]:
    return [
        event(first + 1, EventKind.PAGE_VIEW, anonymous_id=anonymous_id, minutes=0),
        event(first + 2, EventKind.PRODUCT_VIEW, anonymous_id=anonymous_id, minutes=1, product_id="P1", price=10),
        event(first + 3, EventKind.CART_ADD, anonymous_id=anonymous_id, minutes=2, product_id="P1", price=10),
        event(first + 4, EventKind.IDENTIFY, user_id=user_id, anonymous_id=anonymous_id, minutes=3),
        event(first + 5, EventKind.PURCHASE, user_id=user_id, anonymous_id=anonymous_id, minutes=4,
              order_id=f"o{first}", revenue=10),
    ]


def test_candidate_ids_are_the_ids_beside_the_key():
    assert candidate_ids(event(1, EventKind.IDENTIFY, user_id="u", anonymous_id="a")) == [("a", "anonymous")]
    assert candidate_ids(event(2, EventKind.CUSTOM, user_id="u", previous_id="old")) == [("old", "alias")]
    assert candidate_ids(event(3, EventKind.PAGE_VIEW, anonymous_id="a")) == []


def test_browsing_before_login_lands_on_the_identified_profile():
    worker = Worker()
    events = browse_then_buy("anon-1", "user-1")
    worker.run([record(e) for e in events])

    assert worker.profile("user-1") == joined_profile("user-1", events)
    assert worker.profile("anon-1") is None  # the anonymous state moved
    assert worker.db.profiles == {"user-1": joined_profile("user-1", events)}
    assert set(worker.db.events.values()) == {"user-1"}
    assert worker.graph.target("anon-1") == "user-1"
    assert {(link["id"], link["status"]) for link in worker.db.links} >= {("anon-1", "merged")}


def test_a_late_anonymous_event_after_the_link_counts_once_for_the_user():
    worker = Worker()
    events = browse_then_buy("anon-1", "user-1")
    worker.run([record(e) for e in events])
    late = event(9, EventKind.PRODUCT_VIEW, anonymous_id="anon-1", minutes=2.5, product_id="P2")
    worker.run([record(late)])
    worker.run([record(late)])  # a client's retry of the same event

    assert worker.profile("user-1") == joined_profile("user-1", events + [late])
    assert worker.profile("anon-1") is None
    assert worker.db.events["e9"] == "user-1"


def test_two_devices_and_an_alias_chain_join_one_user():
    worker = Worker()
    phone = browse_then_buy("phone", "user-1")
    laptop = [event(20, EventKind.PAGE_VIEW, anonymous_id="laptop", minutes=10),
              event(21, EventKind.IDENTIFY, user_id="user-1", anonymous_id="laptop", minutes=11)]
    # The shop renames the account: an alias from the old user id to the new one.
    renamed = [event(30, EventKind.CUSTOM, user_id="user-1b", previous_id="user-1", minutes=20),
               event(31, EventKind.PAGE_VIEW, user_id="user-1b", minutes=21)]
    worker.run([record(e) for e in phone])
    worker.run([record(e) for e in laptop])
    worker.run([record(e) for e in renamed])
    late_phone = event(40, EventKind.PAGE_VIEW, anonymous_id="phone", minutes=22)
    worker.run([record(late_phone)])  # phone -> user-1 -> user-1b

    everything = phone + laptop + renamed + [late_phone]
    assert worker.profile("user-1b") == joined_profile("user-1b", everything)
    assert [key for key in ("phone", "laptop", "user-1") if worker.profile(key)] == []
    assert worker.db.profiles == {"user-1b": joined_profile("user-1b", everything)}


def test_a_link_read_after_its_user_joined_another_reaches_that_one():
    """Partitions run apart: a link to u1 can be read after u1 itself was merged into u2."""
    worker = Worker()
    first = [event(1, EventKind.PAGE_VIEW, user_id="u1"),
             event(2, EventKind.CUSTOM, user_id="u2", previous_id="u1", minutes=1)]
    device = event(3, EventKind.PRODUCT_VIEW, anonymous_id="a1", minutes=2, product_id="P1")
    worker.run([record(e) for e in first] + [record(device)])
    worker.run([(partition_for("a1", PARTITIONS), identity_link_record("a1", "u1", "anonymous"))])
    late = event(4, EventKind.PAGE_VIEW, anonymous_id="a1", minutes=3)
    worker.run([record(late)])  # a1 -> u1 -> u2

    assert worker.profile("u2") == joined_profile("u2", first + [device, late])
    assert [key for key in ("u1", "a1") if worker.profile(key)] == []
    assert worker.db.profiles == {"u2": joined_profile("u2", first + [device, late])}


def test_a_link_in_flight_when_its_user_is_merged_into_another_is_merged_there_too():
    """The order two partitions may read things in: a-cy's link to cy-old is still on its way when
    cy-old itself is merged into cy; a-cy's state must still reach cy, once."""
    worker = Worker()

    device = event(1, EventKind.PAGE_VIEW, anonymous_id="a-cy")
    login = event(2, EventKind.IDENTIFY, user_id="cy-old", anonymous_id="a-cy", minutes=1)
    alias = event(3, EventKind.CUSTOM, user_id="cy", previous_id="cy-old", minutes=2)
    worker.step([record(device)])
    link_a_cy = worker.step([record(login)])  # the link a-cy -> cy-old, held back
    link_cy_old = worker.step([record(alias)])
    merge_cy_old = worker.step(link_cy_old)
    assert worker.step(merge_cy_old) == []  # cy-old is cy's now
    merge_a_cy = worker.step(link_a_cy)  # a-cy is claimed for cy-old ...
    passed_on = worker.step(merge_a_cy)  # ... whose partition passes the merge on to cy
    assert worker.step(passed_on) == []

    assert worker.profile("cy") == joined_profile("cy", [device, login, alias])
    assert [key for key in ("a-cy", "cy-old") if worker.profile(key)] == []
    assert worker.db.profiles == {"cy": joined_profile("cy", [device, login, alias])}


@pytest.mark.parametrize("crash_at_send", range(1, 6))
def test_a_crash_at_any_send_loses_and_doubles_nothing(crash_at_send):
    """The worker dies at one send (a link, a merge, a forwarded record): the batch comes again."""
    worker = Worker(crash_at_send=crash_at_send)
    events = browse_then_buy("anon-1", "user-1") + [
        event(10, EventKind.PAGE_VIEW, anonymous_id="phone-1", minutes=20),
        event(11, EventKind.IDENTIFY, user_id="user-1", anonymous_id="phone-1", minutes=21)]
    late = event(12, EventKind.PAGE_VIEW, anonymous_id="anon-1", minutes=3.5)
    worker.run([record(e) for e in events])
    worker.run([record(late)])

    assert worker.sends >= crash_at_send, "the journey sends fewer records than the crash point"
    assert worker.profile("user-1") == joined_profile("user-1", events + [late])
    assert worker.db.profiles == {"user-1": joined_profile("user-1", events + [late])}


def test_a_crash_at_any_send_of_an_alias_chain_loses_and_doubles_nothing():
    phone = browse_then_buy("phone", "user-1")
    later = [event(20, EventKind.PAGE_VIEW, anonymous_id="laptop", minutes=10),
             event(21, EventKind.IDENTIFY, user_id="user-1", anonymous_id="laptop", minutes=11),
             event(30, EventKind.CUSTOM, user_id="user-1b", previous_id="user-1", minutes=20),
             event(31, EventKind.PAGE_VIEW, anonymous_id="phone", minutes=21)]

    def journey(worker: Worker) -> None:
        worker.run([record(e) for e in phone])
        for e in later:
            worker.run([record(e)])

    clean = Worker()
    journey(clean)
    want = joined_profile("user-1b", phone + later)
    assert clean.profile("user-1b") == want and clean.sends > 5
    for crash_at_send in range(1, clean.sends + 1):
        worker = Worker(crash_at_send=crash_at_send)
        journey(worker)
        assert (crash_at_send, worker.profile("user-1b")) == (crash_at_send, want)
        assert (crash_at_send, worker.db.profiles) == (crash_at_send, {"user-1b": want})


def test_a_link_sent_again_does_not_hold_back_events_of_an_id_claimed_before():
    """Links go out again while a merge is on its way; a late event of the id read before such a link
    in one batch is still forwarded, not folded into a fresh state of the id."""
    worker = Worker()

    browse = event(1, EventKind.PAGE_VIEW, anonymous_id="a1")
    login = event(2, EventKind.IDENTIFY, user_id="u1", anonymous_id="a1", minutes=1)
    again = event(3, EventKind.CHECKOUT, user_id="u1", anonymous_id="a1", minutes=2)
    late = event(4, EventKind.PAGE_VIEW, anonymous_id="a1", minutes=0.5)
    worker.step([record(browse)])
    first_link = worker.step([record(login)])
    merge = worker.step(first_link)  # a1 is claimed; its merge is not read yet
    second_link = worker.step([record(again)])  # u1 still sees a1 as linked: the link goes again
    assert second_link
    then = worker.step([record(late), *second_link])  # the late event comes before that link
    worker.run(merge + then)

    assert worker.profile("u1") == joined_profile("u1", [browse, login, again, late])
    assert worker.profile("a1") is None and "a1" not in worker.db.profiles


def test_redelivered_batches_change_nothing():
    worker = Worker()
    events = browse_then_buy("anon-1", "user-1")
    worker.run([record(e) for e in events])
    for batch in list(worker.batches):  # every batch again, as after a crash before its commit
        asyncio.run(worker.tracker.process(batch))
        while worker.sent:
            batch, worker.sent = worker.sent, []
            asyncio.run(worker.tracker.process(batch))

    assert worker.profile("user-1") == joined_profile("user-1", events)
    assert worker.db.profiles == {"user-1": joined_profile("user-1", events)}


def test_a_denylisted_id_is_never_joined_and_the_refusal_is_recorded():
    worker = Worker()
    shared = [event(1, EventKind.IDENTIFY, user_id="user-1", anonymous_id="null"),
              event(2, EventKind.IDENTIFY, user_id="user-2", anonymous_id="NULL ")]
    worker.run([record(event(0, EventKind.PAGE_VIEW, anonymous_id="null"))] + [record(e) for e in shared])

    assert worker.profile("null")["events"] == 1  # still counts, on a profile of its own
    assert worker.profile("user-1")["events"] == 1 and worker.profile("user-2")["events"] == 1
    refused = [(link["user_key"], link["id"], link["status"]) for link in worker.db.links]
    assert ("user-1", "null", "refused") in refused and ("user-2", "NULL ", "refused") in refused


def test_an_id_claimed_by_one_user_is_refused_to_another():
    worker = Worker()
    worker.run([record(e) for e in browse_then_buy("kiosk", "user-1")])
    worker.run([record(event(50, EventKind.IDENTIFY, user_id="user-2", anonymous_id="kiosk", minutes=30))])

    assert worker.graph.target("kiosk") == "user-1"
    assert worker.profile("user-2")["events"] == 1
    sends = worker.sends  # the kiosk's partition told user-2's: no link is sent for it again
    worker.run([record(event(51, EventKind.PAGE_VIEW, user_id="user-2", anonymous_id="kiosk", minutes=31))])
    assert worker.sends == sends and worker.profile("user-2")["events"] == 2
    assert ("user-2", "kiosk", "refused") in [(r["user_key"], r["id"], r["status"]) for r in worker.db.links]


def test_the_cap_stops_one_user_absorbing_every_device():
    worker = Worker(max_ids=3)
    logins = [event(n, EventKind.IDENTIFY, user_id="user-1", anonymous_id=f"device-{n}", minutes=n)
              for n in range(10)]
    worker.run([record(e) for e in logins])

    assert len(worker.graph.joined("user-1")) == 3
    statuses = [r["status"] for r in worker.db.links if r["user_key"] == "user-1"]
    assert statuses.count("refused") == 7


def test_erasing_a_user_forgets_its_identities():
    worker = Worker()
    worker.run([record(e) for e in browse_then_buy("anon-1", "user-1")])
    worker.run([(partition_for("anon-1", PARTITIONS), erasure_record("anon-1")),
                (partition_for("user-1", PARTITIONS), erasure_record("user-1"))])

    assert worker.graph.target("anon-1") is None and worker.graph.joined("user-1") == {}
    assert worker.profile("user-1") is None


@pytest.mark.parametrize("bad", [
    b'{"identity_link": {"id": "", "user_key": "u", "kind": "anonymous"}}',
    b'{"identity_link": {"id": "a", "user_key": "u", "kind": "nobody"}}',
    b'{"identity_merge": {"from": "a", "into": "u", "kind": "anonymous", "state": 3, "ids": {}}}',
    b'{"identity_merge": {"from": "a", "into": "u", "kind": "anonymous", "state": "not a state", "ids": {}}}',
    b'{"identity_merge": {"from": "a", "into": "u", "kind": "anonymous", "state": null, "ids": ["b"]}}',
    b'{"identity_merge": {"from": "a", "into": "u", "kind": "anonymous", "state": null, "ids": {'
    + b",".join(b'"i%d": "merged"' % n for n in range(1001)) + b'}}}',
])
def test_a_malformed_identity_record_is_a_bad_row_and_the_batch_goes_on(bad):
    worker = Worker()
    worker.run([(0, bad), record(event(1, EventKind.PAGE_VIEW, anonymous_id="a"))])

    assert len(worker.bad_rows) == 1
    assert worker.profile("a")["events"] == 1
    assert orjson.loads(bad)  # the test's own input is JSON: the refusal is the worker's
