"""Lists made ahead and served from memory (migrations 0021 and 0028, storage/recommendation_reads.py) on
the real PostgreSQL: ``make_lists`` stores what storage/recommendations.py works out (users and products);
``ServedLists`` answers the same bytes from memory, without reading the database, and follows what
PostgreSQL notifies (a list made again, an erasure, a merge, an opt-out made into a non-personal list)
within its refresh; it loads everything again after losing its connection. ``make_lists`` makes
``MAX_LISTS_PER_PASS`` at most and works ``LIST_SECONDS_PER_PASS`` at most on what changed, the rest first
at the next pass, then missing and old lists, resting as long as it works; the segments runner's
incremental pass makes the changed users' and products' lists."""

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from sqlalchemy import text

from spoor.events import Event, EventKind, ProductLine
from spoor.privacy.consent import set_consent
from spoor.privacy.erasure import erase_user
from spoor.segments import membership
from spoor.storage import recommendation_reads
from spoor.storage.identities import move_rows
from spoor.storage.interests import fold_product_deltas
from spoor.storage.recommendation_reads import (
    BACKLOG,
    LEFT_BEHIND_QUEUED,
    STORE_USER_LIST,
    STORED_K,
    STORED_LIST_MAX_AGE_S,
    ListPace,
    ServedLists,
    _first,
    _items,
    make_lists,
)
from spoor.storage.recommendations import for_product, for_user
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.interests import DAY_S, interest_batch
from tests.support.local_stack import wait_until
from tests.support.segments_data import profile, put_profiles

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
H, TREND_H = 30 * DAY_S, 3 * DAY_S
REFRESH_S = 0.05
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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
    """The worker's write of one batch, with the interests it adds, and the segments runner's fold of the
    product rows it appended (migration 0031), which comes before the runner makes the lists."""
    writer.write_batch([], events, interests=interest_batch(events, H, TREND_H), **options)
    fold_product_deltas(writer.engine)


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
def served(engine):
    lists = ServedLists(engine, refresh_s=REFRESH_S)
    lists.start()
    yield lists
    lists.stop()


@pytest.fixture(autouse=True)
def a_runner_already_running():
    """As in a runner past its first pass: no backlog, none left behind by another."""
    BACKLOG.update(users=[], products=[])
    LEFT_BEHIND_QUEUED.update(done=True)


def computed(engine, user: str, k: int = STORED_K) -> dict:
    """What storage/recommendations.py works out now."""
    with engine.connect() as conn:
        return for_user(conn, user, k)


def answer(served: ServedLists, user: str, k: int = 10) -> dict:
    body = served.user(user, k)
    assert body is not None
    return orjson.loads(body)


def soon(condition, what: str):
    """The served lists follow a change within a few refreshes."""
    return wait_until(condition, 5, what, interval=0.02)


def stored(engine, user: str):
    with engine.connect() as conn:
        return conn.execute(text("SELECT items, personal, interests_changed_at, computed_at, ids "
                                 "FROM user_recommendations WHERE user_key = :u"), {"u": user}).one_or_none()


def unbuy(engine, tag: str) -> None:
    """P1 and P2 were only seen together: changes P2's reason in ann's list from "bought with P1"."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE product_affinity SET bought = NULL WHERE product_id IN (:a, :b) "
                          "AND neighbour_id IN (:a, :b)"), {"a": f"{tag}-P1", "b": f"{tag}-P2"})


def reason(answer: dict, product_id: str) -> str:
    return next(item["reason"] for item in answer["items"] if item["product_id"] == product_id)


def age(engine, table: str, key_column: str, key: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {table} SET computed_at = now() - make_interval(secs => :s) WHERE {key_column} = :k"),
                     {"s": STORED_LIST_MAX_AGE_S + 1, "k": key})


def test_lists_are_served_from_memory_as_made_and_follow_a_remake(engine, writer, served):
    ann = shop(writer, "a")
    at_make_time = computed(engine, ann)
    assert at_make_time["personal"] and reason(at_make_time, "a-P2") == "bought with a-P1"
    assert answer(served, ann)["personal"] is False  # no list made yet: the fallback
    made = make_lists(engine, [ann], EPOCH)
    assert made.users >= 1 and made.products >= 3  # ann's, and every product's (all changed since EPOCH)
    assert stored(engine, ann).items == at_make_time["items"]
    for k in (1, 5, STORED_K):
        soon(lambda: answer(served, ann, k) == {"user_key": ann, "personal": True, "items": at_make_time["items"][:k]},
             f"ann's top {k}")
        with engine.connect() as conn:
            expected = for_product(conn, "a-P1", k)
        # made in a transaction of their own after the users' lists: they may reach memory a refresh later
        soon(lambda: orjson.loads(served.product("a-P1", k)) == expected, f"a-P1's top {k}")
    assert served.user(ann, STORED_K + 1) is None and served.product("a-P1", STORED_K + 1) is None  # worked out

    unbuy(engine, "a")  # another shopper's change: the database says otherwise, memory keeps the made list
    assert reason(computed(engine, ann), "a-P2") == "viewed with a-P1"
    time.sleep(5 * REFRESH_S)
    assert answer(served, ann, STORED_K)["items"] == at_make_time["items"]
    assert reason(orjson.loads(served.product("a-P1", 5)), "a-P2") == "bought with a-P1"
    # Old lists are made again by a later pass, and the remade rows reach memory.
    age(engine, "user_recommendations", "user_key", ann)
    age(engine, "product_recommendations", "product_id", "a-P1")
    made = make_lists(engine, [])
    assert made.users >= 1 and made.products >= 1
    soon(lambda: answer(served, ann) == computed(engine, ann, 10), "the remade list")
    assert reason(answer(served, ann), "a-P2") == "viewed with a-P1"
    soon(lambda: reason(orjson.loads(served.product("a-P1", 5)), "a-P2") == "viewed with a-P1", "a-P1's remade list")


def test_unknown_users_and_products_get_the_fallback_as_worked_out(engine, writer, served):
    shop(writer, "f")
    # The trending products are read again every FALLBACK_REFRESH_S.
    soon(lambda: answer(served, "never-seen", 3) == computed(engine, "never-seen", 3), "the new trending products")
    with engine.connect() as conn:
        for k in (1, 3, STORED_K):
            assert answer(served, "never-seen", k) == for_user(conn, "never-seen", k)
            assert orjson.loads(served.product("NO-SUCH", k)) == for_product(conn, "NO-SUCH", k)
    assert answer(served, "never-seen")["personal"] is False
    # Ids as the route may pass them: JSON-escaped in the answer.
    odd = 'quote " backslash \\ tab \t é 💡'
    assert answer(served, odd)["user_key"] == odd
    assert orjson.loads(served.product(odd, 2))["product_id"] == odd


def test_a_new_event_reaches_the_served_list_with_the_next_pass(engine, writer, served):
    ann = shop(writer, "b")
    make_lists(engine, [ann])
    made = stored(engine, ann)
    soon(lambda: answer(served, ann)["items"] == made.items[:10], "ann's list")
    unbuy(engine, "b")
    write(writer, [ev("b-v3", ann, EventKind.PRODUCT_VIEW, NOW, "b-P4", category="b")])
    assert answer(served, ann)["items"] == made.items[:10]  # until the runner makes it again
    started = time.monotonic()
    make_lists(engine, [ann])
    soon(lambda: answer(served, ann) == computed(engine, ann, 10), "the list with b-P4's view")
    assert time.monotonic() - started < 5
    assert reason(answer(served, ann), "b-P2") == "viewed with b-P1"
    # A list made from interests that changed before it was stored is not stored (the next pass makes it).
    with engine.connect() as conn:
        stale = conn.execute(STORE_USER_LIST, {"user_key": ann, "items": "[]", "personal": True, "ids": None,
                                               "changed_at": made.interests_changed_at})
        assert stale.rowcount == 0


def test_an_opt_out_makes_a_non_personal_list_and_an_opt_in_the_personal_one(engine, writer, served):
    ann = shop(writer, "c")
    make_lists(engine, [ann])
    personal = stored(engine, ann).items
    soon(lambda: answer(served, ann)["personal"], "ann's personal list")
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    set_consent(engine, ann, True)
    assert make_lists(engine, [], since).users >= 1  # the pass picks up the consent change
    assert stored(engine, ann).personal is False
    soon(lambda: answer(served, ann) == computed(engine, ann, 10), "ann's non-personal list")
    opted_out = answer(served, ann)
    assert opted_out["personal"] is False and {i["reason"] for i in opted_out["items"]} == {"trending now"}
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    set_consent(engine, ann, False)
    make_lists(engine, [], since)
    soon(lambda: answer(served, ann)["personal"], "ann's personal list again")
    assert answer(served, ann)["items"] == personal[:10] == computed(engine, ann, 10)["items"]


def test_erasure_removes_the_served_lists(test_settings, engine, writer, served):
    ann = shop(writer, "d")
    make_lists(engine, [ann, "d-s0"])
    soon(lambda: answer(served, ann)["personal"] and answer(served, "d-s0")["personal"], "the lists")
    settings = test_settings.model_copy(update={"erase_worker_wait_s": 0.1})
    report = erase_user(settings, engine, ann, actor="test")  # what `spoor users erase` runs
    assert report["rows_removed"]["user_recommendations"] == 1 and stored(engine, ann) is None
    soon(lambda: answer(served, ann)["personal"] is False, "ann's list gone")
    assert {i["reason"] for i in answer(served, ann)["items"]} == {"trending now"}
    write(writer, [], erased_users=["d-s0"])  # an erasure record reaching the worker
    assert stored(engine, "d-s0") is None
    soon(lambda: answer(served, "d-s0")["personal"] is False, "d-s0's list gone")
    assert make_lists(engine, [ann, "d-s0"]).users == 0  # no interests left: no list


def test_a_merged_id_finds_the_users_list_and_its_own_is_deleted(engine, writer, served):
    ann = shop(writer, "e")
    write(writer, [ev("e-anon-1", "e-anon", EventKind.PURCHASE, NOW - timedelta(minutes=30), lines=("e-P5",),
                      category="e")])
    make_lists(engine, [ann, "e-anon"])
    soon(lambda: answer(served, "e-anon")["personal"], "e-anon's own list")
    with engine.begin() as conn:
        assert move_rows(conn, "e-anon", ann)["user_recommendations"] == 1
        conn.execute(text("INSERT INTO user_identities (id, user_key, kind, status) "
                          "VALUES ('e-anon', :u, 'anonymous', 'merged'), ('e-older', 'e-anon', 'anonymous', 'merged')"),
                     {"u": ann})
    soon(lambda: answer(served, "e-anon")["personal"] is False, "e-anon's own list deleted")
    make_lists(engine, [ann])  # ann's interests changed with the merge: the runner makes her list again
    assert sorted(stored(engine, ann).ids) == ["e-anon", "e-older"]  # a chain e-older -> e-anon -> ann too
    expected = computed(engine, ann, 10)
    assert (expected["items"][0]["product_id"], expected["items"][0]["reason"]) == ("e-P5", "buy again")
    for any_id in (ann, "e-anon", "e-older"):
        soon(lambda: answer(served, any_id) == {**expected, "user_key": any_id}, f"ann's list by {any_id}")


def test_a_lost_connection_loads_everything_again(engine, writer, served):
    ann = shop(writer, "k")
    make_lists(engine, [ann, "k-s1"])
    soon(lambda: answer(served, ann)["personal"] and answer(served, "k-s1")["personal"], "the lists")
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
                          "AND datname = current_database()"))
        conn.execute(text("DELETE FROM user_recommendations WHERE user_key = 'k-s1'"))  # notified to no one
    soon(lambda: answer(served, "k-s1")["personal"] is False, "k-s1's list gone after the reload")
    assert answer(served, ann)["personal"]


def test_make_lists_caps_a_pass_carries_what_is_left_and_fills_in_missing_lists(engine, writer, monkeypatch):
    shop(writer, "g")
    monkeypatch.setattr(recommendation_reads, "MAX_LISTS_PER_PASS", 3)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM user_recommendations"))
        users = sorted(conn.execute(text("SELECT DISTINCT user_key FROM user_interests")).scalars())
    assert len(users) > 9

    def listed() -> set[str]:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT user_key FROM user_recommendations")).scalars())

    assert make_lists(engine, ["g-ann"]).users == 3
    first = listed()
    assert "g-ann" in first and len(first) == 3  # the key given, then two without a list
    given = [u for u in users if u not in first][:5]
    assert make_lists(engine, given).users == 3 and len(listed() - first) == 3 and listed() - first < set(given)
    assert set(BACKLOG["users"]) == set(given) - listed() and len(BACKLOG["users"]) == 2
    assert make_lists(engine, []).users == 3 and set(given) <= listed()  # the two left, then one missing
    while len(listed()) < len(users):
        before = listed()
        assert make_lists(engine, []).users == min(3, len(users) - len(before))
        assert before < listed()  # only users without a list
    assert listed() == set(users)
    assert make_lists(engine, []).users == 0  # every list is fresh
    assert make_lists(engine, users).users == 0  # and made from the interests as they are: nothing to make
    assert make_lists(engine, ["nobody-at-all"]).users == 0  # no interests: no list
    age(engine, "user_recommendations", "user_key", "g-s1")
    old = stored(engine, "g-s1").computed_at
    assert make_lists(engine, []).users == 1 and stored(engine, "g-s1").computed_at > old
    # Out of time for what changed: one list, the others wait for the next pass, after its own changes.
    monkeypatch.setattr(recommendation_reads, "LIST_SECONDS_PER_PASS", 0.0)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM user_recommendations WHERE user_key = ANY(:u)"), {"u": users[:3] + users[5:6]})
    assert make_lists(engine, users[:3]).users == 1 and len(BACKLOG["users"]) == 2
    left = list(BACKLOG["users"])
    assert make_lists(engine, users[5:6]).users == 1 and BACKLOG["users"] == left  # users[5] first
    assert stored(engine, users[5]) is not None


def database_now(engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(text("SELECT now()")).scalar_one()


def test_old_lists_are_made_again_only_after_the_products_changed(engine, writer, monkeypatch):
    monkeypatch.setattr(recommendation_reads, "DUE_LISTS_SECONDS_PER_PASS", 60.0)  # every due list in one pass
    ann = shop(writer, "i")
    make_lists(engine, [ann], EPOCH)

    def made_at() -> tuple[datetime, datetime]:
        with engine.connect() as conn:
            product = conn.execute(text("SELECT computed_at FROM product_recommendations WHERE product_id = 'i-P1'"))
            return stored(engine, ann).computed_at, product.scalar_one()

    def age_both() -> tuple[datetime, datetime]:
        age(engine, "user_recommendations", "user_key", ann)
        age(engine, "product_recommendations", "product_id", "i-P1")
        return made_at()

    # Idle: the product tables last changed before the lists were made. Old as they are, they stay.
    old = age_both()
    with engine.begin() as conn:
        conn.execute(text("UPDATE product_popularity SET updated_at = least(updated_at, now() - make_interval(secs => :s))"),
                     {"s": STORED_LIST_MAX_AGE_S + 100})
    for since in (database_now(engine), None):
        make_lists(engine, [], since)
        assert made_at() == old
    # Another shopper views i-P3: the product tables changed, so every list made before is due when old.
    since = database_now(engine)
    write(writer, [ev("i-bob-v", "i-bob", EventKind.PRODUCT_VIEW, NOW, "i-P3", category="i")])
    make_lists(engine, ["i-bob"], since)
    remade = made_at()
    assert remade[0] > old[0] and remade[1] > old[1]
    assert stored(engine, "i-bob") is not None


def test_a_restarted_runner_makes_the_lists_its_predecessor_left_behind(engine, writer):
    ann, bob = shop(writer, "j"), "j-s1"
    make_lists(engine, [ann, bob], EPOCH)
    first_pass_done = database_now(engine)
    made = {user: stored(engine, user) for user in (ann, bob)}
    # Changes the runner was told of but had no time for: ann viewed another product, bob opted out.
    write(writer, [ev("j-v3", ann, EventKind.PRODUCT_VIEW, NOW, "j-P2", category="j")])
    set_consent(engine, bob, True)
    # Its next pass would make them (past the changes' window: its cursor moved on); it stopped instead. Another
    # runner's first pass finds both lists, though no key is given and their changes are out of its window.
    since = database_now(engine)
    make_lists(engine, [], since)
    assert {user: stored(engine, user) for user in (ann, bob)} == made  # the same process: not looked for again
    LEFT_BEHIND_QUEUED.update(done=False)
    make_lists(engine, [], since)
    assert stored(engine, ann).interests_changed_at > made[ann].interests_changed_at
    assert stored(engine, bob).personal is False and stored(engine, bob).computed_at > first_pass_done


def test_the_first_k_items_are_cut_from_the_served_bytes_whatever_the_ids_hold():
    items = [{"product_id": pid, "score": 1.0 / (n + 1), "reason": f"bought with {pid}"}
             for n, pid in enumerate(["plain", 'line\nbreak', "},{", "\\n", "tab\t", "💡", '"', ""])]
    served = _items(orjson.dumps(items).decode())
    assert orjson.loads(served) == items
    for k in range(1, len(items) + 2):
        assert orjson.loads(_first(served, k)) == items[:k]
    assert _first(_items("[]"), 3) == b"[]"


def test_list_making_rests_as_long_as_it_works():
    pace = ListPace(share=0.5, slice_s=0.02)
    started = time.monotonic()
    for _ in range(4):
        pace.step(lambda _key: time.sleep(0.01), "x")
    elapsed = time.monotonic() - started
    # As long as it worked, but for the last slice's work if that was under slice_s (not rested yet).
    assert 0.04 <= pace.worked < elapsed and elapsed >= 2 * pace.worked - 0.02


def test_the_incremental_pass_makes_the_lists_of_changed_users_and_products(engine, writer):
    ann = shop(writer, "h")
    put_profiles(engine, [profile(key, NOW) for key in (ann, "h-s0")])
    membership.incremental_pass(engine, NOW, overlap_s=0, cursor="lists")
    assert stored(engine, ann).items == computed(engine, ann)["items"]
    untouched = stored(engine, "h-s0")
    with engine.connect() as conn:
        product_made = conn.execute(text("SELECT computed_at FROM product_recommendations WHERE product_id = 'h-P2'"
                                         )).scalar_one()
    write(writer, [ev("h-v3", ann, EventKind.PRODUCT_VIEW, NOW, "h-P2", category="h")])
    put_profiles(engine, [profile(ann, NOW)])
    membership.incremental_pass(engine, NOW, overlap_s=0, cursor="lists")
    items, personal, made_from, _computed_at, _ids = stored(engine, ann)
    assert (items, personal) == (computed(engine, ann)["items"], True)
    with engine.connect() as conn:
        assert made_from == conn.execute(text("SELECT max(updated_at) FROM user_interests WHERE user_key = :u"),
                                         {"u": ann}).scalar_one()
        assert conn.execute(text("SELECT computed_at FROM product_recommendations WHERE product_id = 'h-P2'")
                            ).scalar_one() > product_made  # h-P2 was viewed: its list was made again
    assert stored(engine, "h-s0") == untouched  # not changed since the last pass, and its list is fresh
