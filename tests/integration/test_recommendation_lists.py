"""Lists made ahead (migration 0021, storage/recommendation_reads.py) on the real PostgreSQL: a stored list
is what ``for_user`` worked out when it was made and is served while the user's interests are unchanged
(a neighbour row changed behind it does not show); the user's own events, an opt-out, an erasure and a
merge of ids show at once; a list older than ``STORED_LIST_MAX_AGE_S`` is still served until a pass remakes
it; a list longer than ``STORED_K`` is worked out on the spot; ``make_lists`` makes ``MAX_LISTS_PER_PASS`` at most, the keys it is given first,
then users with no list or an old one; the segments runner's incremental pass makes the changed users'.

The service under test keeps nothing in memory (``product_ttl_s`` and ``list_ttl_s`` 0, a clock that moves
at every read), so an answer that is not what the database says now came from ``user_recommendations``."""

import itertools
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text

from spoor.events import Event, EventKind, ProductLine
from spoor.privacy.consent import set_consent
from spoor.privacy.erasure import erase_user
from spoor.segments import membership
from spoor.storage import recommendation_reads
from spoor.storage.identities import move_rows
from spoor.storage.recommendation_reads import (STORED_K, STORED_LIST_MAX_AGE_S, RecommendationService,
                                                make_lists)
from spoor.storage.recommendations import for_user
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.interests import DAY_S, interest_batch
from tests.support.segments_data import profile, put_profiles

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
H, TREND_H = 30 * DAY_S, 3 * DAY_S


def ev(event_id: str, user: str, kind: EventKind, at: datetime, product: str | None = None,
       lines: tuple[str, ...] = (), category: str = "mugs") -> Event:
    return Event(event_id=event_id, kind=kind, name=kind.value, user_key=user, event_time=at, received_at=at,
                 source="test", product_id=product, category=category if product else None,
                 order_id=f"o-{event_id}" if kind == EventKind.PURCHASE else None,
                 products=tuple(ProductLine(product_id=p, category=category, price=Decimal("9.50")) for p in lines))


@pytest.fixture(scope="module")
def writer(engine) -> StreamWriter:
    return StreamWriter(engine)


def write(writer: StreamWriter, events: list[Event], **options) -> None:
    """The worker's write of one batch, with the interests it adds."""
    writer.write_batch([], events, interests=interest_batch(events, H, TREND_H), **options)


def shop(writer: StreamWriter, tag: str) -> str:
    """Five shoppers buy P1 with P2 (a bought-together pair), and P3 alone; ``{tag}-ann`` views P1 then P3
    (a seen-together pair) an hour before NOW. Returns ann's key."""
    def p(n: int) -> str:
        return f"{tag}-P{n}"
    bought = NOW - timedelta(days=2)
    write(writer, [ev(f"{tag}-o{i}", f"{tag}-s{i}", EventKind.PURCHASE, bought, lines=(p(1), p(2)), category=tag)
                   for i in range(5)]
          + [ev(f"{tag}-q{i}", f"{tag}-s{i}", EventKind.PURCHASE, bought, lines=(p(3),), category=tag)
             for i in range(5)])
    ann = f"{tag}-ann"
    write(writer, [ev(f"{tag}-v1", ann, EventKind.PRODUCT_VIEW, NOW - timedelta(hours=1), p(1), category=tag),
                   ev(f"{tag}-v2", ann, EventKind.PRODUCT_VIEW, NOW - timedelta(minutes=55), p(3), category=tag)])
    return ann


@pytest.fixture()
def service(engine):
    ticks = itertools.count()
    service = RecommendationService(engine, product_ttl_s=0, list_ttl_s=0, clock=lambda: float(next(ticks)))
    yield service
    service.engine.dispose()


def computed(engine, user: str, k: int = STORED_K) -> dict:
    """What storage/recommendations.py works out now."""
    with engine.connect() as conn:
        return for_user(conn, user, k)


def stored(engine, user: str):
    with engine.connect() as conn:
        return conn.execute(text("SELECT items, personal, interests_changed_at, computed_at "
                                 "FROM user_recommendations WHERE user_key = :u"), {"u": user}).one_or_none()


def changed_at(engine, user: str) -> datetime:
    with engine.connect() as conn:
        return conn.execute(text("SELECT max(updated_at) FROM user_interests WHERE user_key = :u"),
                            {"u": user}).scalar_one()


def unbuy(engine, tag: str) -> None:
    """P1 and P2 were only seen together: changes P2's reason in ann's list from "bought with P1"."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE product_affinity SET bought = NULL WHERE product_id IN (:a, :b) "
                          "AND neighbour_id IN (:a, :b)"), {"a": f"{tag}-P1", "b": f"{tag}-P2"})


def reason(answer: dict, product_id: str) -> str:
    return next(item["reason"] for item in answer["items"] if item["product_id"] == product_id)


def test_a_list_made_ahead_is_served_while_the_users_interests_are_unchanged(engine, writer, service):
    ann = shop(writer, "a")
    at_make_time = computed(engine, ann)
    assert at_make_time["personal"] and reason(at_make_time, "a-P2") == "bought with a-P1"
    assert make_lists(engine, [ann]) >= 1
    items, personal, made_from, _computed_at = stored(engine, ann)
    assert (items, personal, made_from) == (at_make_time["items"], True, changed_at(engine, ann))
    assert service.for_user(ann, 5) == {"user_key": ann, "personal": True, "items": at_make_time["items"][:5]}

    unbuy(engine, "a")  # another shopper's change: the database now says otherwise
    assert reason(computed(engine, ann), "a-P2") == "viewed with a-P1"
    assert service.for_user(ann, STORED_K) == {"user_key": ann, "personal": True, "items": at_make_time["items"]}
    # Longer than a stored list: worked out on the spot.
    longer = service.for_user(ann, STORED_K + 1)
    assert longer == computed(engine, ann, STORED_K + 1) and reason(longer, "a-P2") == "viewed with a-P1"
    # Older than STORED_LIST_MAX_AGE_S: still served (age never sends a request down the slow path) until
    # a pass remakes it, with the other shopper's change.
    with engine.begin() as conn:
        conn.execute(text("UPDATE user_recommendations SET computed_at = now() - make_interval(secs => :s) "
                          "WHERE user_key = :u"), {"s": STORED_LIST_MAX_AGE_S + 1, "u": ann})
    assert service.for_user(ann, 5) == {"user_key": ann, "personal": True, "items": at_make_time["items"][:5]}
    assert make_lists(engine, []) >= 1
    assert service.for_user(ann, 5) == computed(engine, ann, 5)
    assert reason(service.for_user(ann, 5), "a-P2") == "viewed with a-P1"


def test_a_new_event_of_the_user_works_the_list_out_again_at_once(engine, writer, service):
    ann = shop(writer, "b")
    make_lists(engine, [ann])
    made = stored(engine, ann)
    unbuy(engine, "b")
    assert service.for_user(ann)["items"] == made.items[:10]  # still the stored list
    write(writer, [ev("b-v3", ann, EventKind.PRODUCT_VIEW, NOW, "b-P4", category="b")])
    assert changed_at(engine, ann) > made.interests_changed_at
    answer = service.for_user(ann)
    assert answer == computed(engine, ann, 10) and answer["personal"]
    assert reason(answer, "b-P2") == "viewed with b-P1" and answer["items"] != made.items[:10]


def test_an_opt_out_shows_at_once_and_an_opt_in_too(engine, writer, service):
    ann = shop(writer, "c")
    make_lists(engine, [ann])
    personal = stored(engine, ann).items
    set_consent(engine, ann, True)
    opted_out = service.for_user(ann)
    assert opted_out["personal"] is False and {i["reason"] for i in opted_out["items"]} == {"trending now"}
    # Opted in again: the personal list, made from interests that have not changed since.
    make_lists(engine, [ann])
    assert stored(engine, ann).items == personal  # no list is made for an opted-out user
    set_consent(engine, ann, False)
    back = service.for_user(ann)
    assert back["personal"] is True and back["items"] == personal[:10] == computed(engine, ann, 10)["items"]


def test_erasure_removes_the_stored_lists(test_settings, engine, writer, service):
    ann = shop(writer, "d")
    make_lists(engine, [ann, "d-s0"])
    assert stored(engine, ann) and stored(engine, "d-s0")
    settings = test_settings.model_copy(update={"erase_worker_wait_s": 0.1})
    report = erase_user(settings, engine, ann, actor="test")  # what `spoor users erase` runs
    assert report["rows_removed"]["user_recommendations"] == 1 and stored(engine, ann) is None
    erased = service.for_user(ann)
    assert erased["personal"] is False and {i["reason"] for i in erased["items"]} == {"trending now"}
    write(writer, [], erased_users=["d-s0"])  # an erasure record reaching the worker
    assert stored(engine, "d-s0") is None and service.for_user("d-s0")["personal"] is False


def test_a_merge_of_ids_deletes_the_merged_ids_list(engine, writer, service):
    ann = shop(writer, "e")
    write(writer, [ev("e-anon-1", "e-anon", EventKind.PURCHASE, NOW - timedelta(minutes=30), lines=("e-P5",),
                      category="e")])
    make_lists(engine, [ann, "e-anon"])
    before = stored(engine, ann)
    assert "e-P5" not in {i["product_id"] for i in before.items if i["reason"] == "buy again"}
    with engine.begin() as conn:
        moved = move_rows(conn, "e-anon", ann)
    assert moved["user_recommendations"] == 1 and stored(engine, "e-anon") is None
    assert stored(engine, ann).items == before.items  # ann's row stays, but her interests changed:
    answer = service.for_user(ann)
    assert answer == computed(engine, ann, 10)
    assert (answer["items"][0]["product_id"], answer["items"][0]["reason"]) == ("e-P5", "buy again")  # e-anon's order


def test_make_lists_caps_a_pass_and_fills_in_users_without_a_list(engine, writer, monkeypatch):
    shop(writer, "g")
    monkeypatch.setattr(recommendation_reads, "MAX_LISTS_PER_PASS", 3)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM user_recommendations"))
        users = sorted(conn.execute(text("SELECT DISTINCT user_key FROM user_interests")).scalars())
    assert len(users) > 9

    def listed() -> set[str]:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT user_key FROM user_recommendations")).scalars())

    assert make_lists(engine, ["g-ann"]) == 3
    first = listed()
    assert "g-ann" in first and len(first) == 3  # the key given, then two without a list
    given = [u for u in users if u not in first][:5]
    assert make_lists(engine, given) == 3 and listed() == first | set(given[:3])  # the first three given only
    while len(listed()) < len(users):
        before = listed()
        assert make_lists(engine, []) == min(3, len(users) - len(before))
        assert before < listed()  # only users without a list
    assert listed() == set(users)
    assert make_lists(engine, []) == 0  # every list is fresh
    assert make_lists(engine, ["nobody-at-all"]) == 0  # no interests: no list
    with engine.begin() as conn:  # an old list is made again
        conn.execute(text("UPDATE user_recommendations SET computed_at = now() - make_interval(secs => :s) "
                          "WHERE user_key = 'g-s1'"), {"s": STORED_LIST_MAX_AGE_S + 1})
    old = stored(engine, "g-s1").computed_at
    assert make_lists(engine, []) == 1 and stored(engine, "g-s1").computed_at > old


def test_the_incremental_pass_makes_the_lists_of_changed_users(engine, writer):
    ann = shop(writer, "h")
    put_profiles(engine, [profile(key, NOW) for key in (ann, "h-s0")])
    membership.incremental_pass(engine, NOW, overlap_s=0, cursor="lists")
    assert stored(engine, ann).items == computed(engine, ann)["items"]
    untouched = stored(engine, "h-s0")
    write(writer, [ev("h-v3", ann, EventKind.PRODUCT_VIEW, NOW, "h-P2", category="h")])
    put_profiles(engine, [profile(ann, NOW)])
    membership.incremental_pass(engine, NOW, overlap_s=0, cursor="lists")
    items, personal, made_from, _computed_at = stored(engine, ann)
    assert (items, personal, made_from) == (computed(engine, ann)["items"], True, changed_at(engine, ann))
    assert stored(engine, "h-s0") == untouched  # not changed since the last pass, and its list is fresh
