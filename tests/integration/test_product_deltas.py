"""Product popularity and affinity appended by the worker and folded by the segments runner (migration 0031,
storage/interests.py), on the real PostgreSQL, against the worker's upserts they replaced (``write_product_merges``,
applied to the same batches in the same order): the fold gives the same rows (to float rounding, the latest
category and price too) for batches out of order, folded at once or between batches; a redelivered batch appends
nothing; rows a worker commits while a fold runs wait for the next one, and a worker writing while the runner
folds again and again loses nothing and counts nothing twice; weights at the extremes an event may hold fold as
they were upserted, and a weight that is not a finite number is refused; the migration's downgrade folds
what is waiting."""

import math
import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from spoor.events import Event, EventKind, ProductLine
from spoor.storage.interests import (
    FOLD_AFFINITY,
    FOLD_CHUNK_ROWS,
    FOLD_POPULARITY,
    fold_product_deltas,
    write_interests,
    write_product_merges,
)
from spoor.storage.writers import StreamWriter
from spoor.stream_processors.interests import DAY_S, interest_batch
from tests.integration.test_event_copy import AWKWARD
from tests.integration.test_retention import alembic_config
from tests.support.scratch_db import ScratchDatabase

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
H, TREND_H = 30 * DAY_S, 3 * DAY_S


def ev(event_id: str, user: str, kind: EventKind = EventKind.PRODUCT_VIEW, minutes: float = 0, at=None,
       **fields) -> Event:
    at = at or NOW + timedelta(minutes=minutes)
    return Event(event_id=event_id, kind=kind, name=kind.value, user_key=user, event_time=at, received_at=NOW,
                 source="web", **fields)


def shop(tag: str, products: str | None = None) -> list[Event]:
    """Three shoppers: views in sessions (seen-together pairs), cart adds, two orders; p2's price changes.
    Ids start with ``tag``, products with ``products`` (``tag`` if not given)."""
    p = f"{products or tag}p"
    lines = (ProductLine(product_id=f"{p}2", category="dresses", price=Decimal("110")),
             ProductLine(product_id=f"{p}3", category="shoes", price=Decimal("80")),
             ProductLine(product_id=f"{p}5", price=Decimal("7.5")))
    return [
        ev(f"{tag}e1", f"{tag}u1", minutes=0, product_id=f"{p}1", category="dresses", price=Decimal("80")),
        ev(f"{tag}e2", f"{tag}u1", minutes=5, product_id=f"{p}2", category="dresses", price=Decimal("120")),
        ev(f"{tag}e3", f"{tag}u1", EventKind.CLICK, minutes=6, product_id=f"{p}3", category="shoes"),
        ev(f"{tag}e4", f"{tag}u1", EventKind.CART_ADD, minutes=9, product_id=f"{p}2"),
        ev(f"{tag}e5", f"{tag}u1", EventKind.PURCHASE, minutes=25, order_id=f"{tag}o1", products=lines),
        ev(f"{tag}e6", f"{tag}u2", minutes=1, product_id=f"{p}1", category="dresses"),
        ev(f"{tag}e7", f"{tag}u2", minutes=3, product_id=f"{p}4", category="bags", price=Decimal("30")),
        ev(f"{tag}e8", f"{tag}u2", EventKind.CART_ADD, minutes=4, product_id=f"{p}1", category="sale"),
        ev(f"{tag}e9", f"{tag}u3", minutes=3 * 24 * 60, product_id=f"{p}2", category="dresses", price=Decimal("99")),
        ev(f"{tag}e10", f"{tag}u3", minutes=3 * 24 * 60 + 2, product_id=f"{p}4", category="bags"),
        ev(f"{tag}e11", f"{tag}u3", EventKind.PURCHASE, minutes=2 * 24 * 60, order_id=f"{tag}o2",
           products=lines[:2]),
    ]


ARRIVALS = {  # batches of indexes into shop(), in the order they arrive
    "one": [list(range(11))],
    "later-first": [[8, 9, 10], [5, 6, 7], [0, 1, 2, 3, 4]],
    "singles": [[i] for i in (10, 3, 0, 8, 1, 6, 2, 9, 4, 7, 5)],
}


def batches_of(tag: str, arrival: str) -> list[list[Event]]:
    events = shop(tag)
    return [[events[i] for i in batch] for batch in ARRIVALS[arrival]]


def upserted(engine, batches: list[list[Event]]) -> None:
    """The worker's writes before migration 0031: each batch's product rows upserted in its transaction."""
    recent: dict = {}
    for events in batches:
        batch = interest_batch(events, H, TREND_H, recent=recent)
        with engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            write_product_merges(cursor, batch, {e.event_id for e in events})


def appended(writer: StreamWriter, batches: list[list[Event]], fold_after: set[int] = frozenset()) -> None:
    """The worker's writes now (deltas appended), folded after the batches in ``fold_after``."""
    recent: dict = {}
    for n, events in enumerate(batches):
        writer.write_batch([], events, interests=interest_batch(events, H, TREND_H, recent=recent))
        if n in fold_after:
            fold_product_deltas(writer.engine)


def product_rows(engine, tag: str) -> dict[str, list[tuple]]:
    """The product tables' rows of ``tag``, with the tag taken out of the keys."""
    with engine.connect() as conn:
        popularity = conn.execute(text(
            "SELECT product_id, category, price, weight, trend, bought FROM product_popularity "
            "WHERE product_id LIKE :p ORDER BY product_id"), {"p": tag + "%"}).all()
        affinity = conn.execute(text(
            "SELECT product_id, neighbour_id, weight, bought FROM product_affinity "
            "WHERE product_id LIKE :p ORDER BY product_id, neighbour_id"), {"p": tag + "%"}).all()
    strip = lambda row: tuple(v.removeprefix(tag) if isinstance(v, str) else v for v in row)  # noqa: E731
    return {"product_popularity": [strip(r) for r in popularity], "product_affinity": [strip(r) for r in affinity]}


def close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    return a == b


def assert_same(got: dict, expected: dict) -> None:
    for table, rows in expected.items():
        assert rows, table
        assert len(got[table]) == len(rows), (table, got[table], rows)
        for mine, theirs in zip(got[table], rows):
            assert all(close(a, b) for a, b in zip(mine, theirs)), (table, mine, theirs)


def waiting(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(text("SELECT count(*) FROM product_popularity_deltas")).scalar_one(),
                conn.execute(text("SELECT count(*) FROM product_affinity_deltas")).scalar_one())


@pytest.fixture(scope="module")
def writer(engine) -> StreamWriter:
    return StreamWriter(engine)


@pytest.mark.parametrize("arrival", list(ARRIVALS))
@pytest.mark.parametrize("folds", ["at-the-end", "after-each"])
def test_the_fold_gives_what_the_upserts_gave(engine, writer, arrival, folds):
    old, new = f"up-{arrival}-{folds}-", f"fold-{arrival}-{folds}-"
    upserted(engine, batches_of(old, arrival))
    batches = batches_of(new, arrival)
    appended(writer, batches, set(range(len(batches))) if folds == "after-each" else set())
    fold_product_deltas(engine)
    expected = product_rows(engine, old)
    assert_same(product_rows(engine, new), expected)
    # the latest category a batch gave (within a batch: its heaviest event's), in the order the batches came
    p1 = next(r for r in expected["product_popularity"] if r[0] == "p1")
    assert p1[1] == {"one": "sale", "later-first": "dresses", "singles": "dresses"}[arrival]
    assert waiting(engine) == (0, 0)


def test_a_redelivered_batch_appends_nothing(engine, writer):
    events = shop("redo-")
    writer.write_batch([], events, interests=interest_batch(events, H, TREND_H))
    first = waiting(engine)
    assert first[0] > 0 and first[1] > 0
    writer.write_batch([], events, interests=interest_batch(events, H, TREND_H))  # redelivered whole
    writer.write_batch([], events[3:7], interests=interest_batch(events[3:7], H, TREND_H))  # a part of it
    assert waiting(engine) == first
    folded = fold_product_deltas(engine)
    assert (folded.popularity_deltas, folded.affinity_deltas) == first
    writer.write_batch([], events, interests=interest_batch(events, H, TREND_H))  # after the fold too
    assert waiting(engine) == (0, 0)
    upserted(engine, [shop("upredo-")])
    assert_same(product_rows(engine, "redo-"), product_rows(engine, "upredo-"))


def test_rows_committed_while_a_fold_runs_wait_for_the_next_fold(engine, writer):
    """A worker's transaction open (its rows appended, not committed) while the runner folds: the fold neither
    waits for it nor takes its rows; committed after, they are there for the next fold."""
    first, second = batches_of("mid-", "later-first")[:2]
    expected_first, expected_second = batches_of("upmid-", "later-first")[:2]
    writer.write_batch([], first, interests=interest_batch(first, H, TREND_H))
    folded = []
    with engine.connect() as worker:
        with worker.begin():
            cursor = worker.connection.dbapi_connection.cursor()
            write_interests(cursor, interest_batch(second, H, TREND_H), {e.event_id for e in second})
            runner = threading.Thread(target=lambda: folded.append(fold_product_deltas(engine)))
            runner.start()
            runner.join(timeout=30)
            assert folded and not runner.is_alive(), "the fold waited for the worker's transaction"
            upserted(engine, [expected_first])
            assert_same(product_rows(engine, "mid-"), product_rows(engine, "upmid-"))
        assert waiting(engine)[0] > 0  # the second batch's rows, committed now
    fold_product_deltas(engine)
    assert waiting(engine) == (0, 0)
    upserted(engine, [expected_second])
    assert_same(product_rows(engine, "mid-"), product_rows(engine, "upmid-"))


def test_a_worker_writing_while_the_runner_folds_loses_nothing(engine, writer):
    """Two writers append batch after batch while the runner folds as fast as it can: with a last fold, the
    rows are the upserts' of the same batches, every delta counted once."""
    tags = ("race0-", "race1-")
    rounds = 40
    batches = {tag: [shop(f"{tag}{n}-", products=tag) for n in range(rounds)] for tag in tags}
    errors: list[BaseException] = []
    writing = threading.Event()
    folds = [0]

    def write(tag: str) -> None:
        try:
            for events in batches[tag]:
                writer.write_batch([], events, interests=interest_batch(events, H, TREND_H))
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    def fold() -> None:
        try:
            while writing.is_set():
                fold_product_deltas(engine)
                folds[0] += 1
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    writing.set()
    threads = [threading.Thread(target=write, args=(tag,)) for tag in tags]
    folder = threading.Thread(target=fold)
    for thread in [folder, *threads]:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    writing.clear()
    folder.join(timeout=60)
    assert not errors, errors[0]
    assert folds[0] > 3, folds
    fold_product_deltas(engine)
    for tag in tags:
        upserted(engine, [shop(f"up-{tag}{n}-", products="up-" + tag) for n in range(rounds)])
        assert_same(product_rows(engine, tag), product_rows(engine, "up-" + tag))


def test_weights_at_the_extremes_fold_as_they_were_upserted(engine, writer):
    """The earliest and latest times an event may hold, on one product and pair, in batches out of order: the
    newest outweighs the oldest by far more than a float holds (the floor of spoor_log2_add)."""
    def events(tag: str) -> list[list[Event]]:
        times = (datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2099, 12, 31, 23, 59, tzinfo=timezone.utc),
                 NOW, datetime(1970, 1, 1, 0, 1, tzinfo=timezone.utc))
        return [[ev(f"{tag}e{n}a", f"{tag}u{n}", at=at, product_id=f"{tag}pa", category=f"c{n}", price=Decimal(n + 1)),
                 ev(f"{tag}e{n}b", f"{tag}u{n}", at=at + timedelta(minutes=1), product_id=f"{tag}pb")]
                for n, at in enumerate(times)][::-1]

    upserted(engine, events("xu-"))
    appended(writer, events("xf-"))
    fold_product_deltas(engine)
    got, expected = product_rows(engine, "xf-"), product_rows(engine, "xu-")
    assert_same(got, expected)
    assert all(math.isfinite(v) for rows in got.values() for row in rows for v in row if isinstance(v, float))


@pytest.mark.parametrize("weight", ["NaN", "Infinity", "-Infinity"])
def test_a_weight_that_is_not_a_finite_number_is_refused(engine, weight):
    for statement in ("INSERT INTO product_popularity_deltas (product_id, weight, trend) VALUES ('nan-p', :w, 1)",
                      "INSERT INTO product_popularity_deltas (product_id, weight, trend, bought) "
                      "VALUES ('nan-p', 1, 1, :w)",
                      "INSERT INTO product_affinity_deltas (product_id, neighbour_id, weight) VALUES ('a', 'b', :w)"):
        with pytest.raises(IntegrityError, match="finite"):
            with engine.begin() as conn:
                conn.execute(text(statement), {"w": float(weight)})


def test_the_migrations_downgrade_folds_what_is_waiting(base_settings):
    """0031's downgrade folds the deltas waiting (nothing the workers appended is lost) before dropping them."""
    db = ScratchDatabase(base_settings.database_url, f"spoor_migration_{uuid.uuid4().hex[:10]}")
    engine = create_engine(db.url)
    try:
        config = alembic_config(db.url)
        command.upgrade(config, "heads")
        writer = StreamWriter(engine)
        first, second = batches_of("down-", "later-first")[:2]
        writer.write_batch([], first, interests=interest_batch(first, H, TREND_H))
        fold_product_deltas(engine)
        writer.write_batch([], second, interests=interest_batch(second, H, TREND_H))
        assert waiting(engine)[0] > 0
        command.downgrade(config, "0016")  # 0031 and every other revision on top of 0016
        with engine.connect() as conn:
            assert conn.execute(text("SELECT to_regclass('product_popularity_deltas')")).scalar() is None
        upserted(engine, [batches_of("updown-", "later-first")[0]])
        upserted(engine, [batches_of("updown-", "later-first")[1]])
        assert_same(product_rows(engine, "down-"), product_rows(engine, "updown-"))
        command.upgrade(config, "heads")
        assert waiting(engine) == (0, 0)
    finally:
        engine.dispose()
        db.drop()


def test_a_backlog_is_folded_in_bounded_chunks_to_the_same_rows(engine, writer):
    """A stopped runner's backlog: chunks of 3 delta rows a transaction, oldest popularity rows first,
    give what one fold gives (the latest category and price included), and nothing is left waiting."""
    upserted(engine, batches_of("up-chunked-", "singles"))
    appended(writer, batches_of("fold-chunked-", "singles"))
    before = waiting(engine)
    folded = fold_product_deltas(engine, chunk=3)
    assert (folded.popularity_deltas, folded.affinity_deltas) == before
    assert before[0] > 3 and before[1] > 3  # more than one chunk of each table
    assert waiting(engine) == (0, 0)
    assert_same(product_rows(engine, "fold-chunked-"), product_rows(engine, "up-chunked-"))


def test_product_ids_and_categories_with_copy_separators_fold_as_they_were_upserted(engine, writer):
    """Product ids and categories come from shoppers' events: tabs, newlines, backslashes and a literal \\N
    in them reach the delta tables by COPY as they reached the product tables by JSON."""
    def events(tag: str) -> list[Event]:
        views = [ev(f"{tag}v{n}", f"{tag}u", minutes=n, product_id=f"{tag}{text}", category=text,
                    price=Decimal("5")) for n, text in enumerate(AWKWARD)]
        lines = tuple(ProductLine(product_id=f"{tag}{text}", category=text, price=Decimal("5")) for text in AWKWARD[:4])
        return views + [ev(f"{tag}o", f"{tag}u", EventKind.PURCHASE, minutes=20, order_id=f"{tag}o1", products=lines)]

    upserted(engine, [events("up-awkward-")])
    appended(writer, [events("fold-awkward-")])
    fold_product_deltas(engine)
    expected = product_rows(engine, "up-awkward-")
    assert {row[0] for row in expected["product_popularity"]} == set(AWKWARD)
    assert_same(product_rows(engine, "fold-awkward-"), expected)


@pytest.mark.parametrize("statement", [FOLD_POPULARITY, FOLD_AFFINITY], ids=["popularity", "affinity"])
def test_a_fold_chooses_its_chunk_by_one_bound_whatever_the_statistics(engine, statement):
    """Linear in the deltas under any plan: the chunk's rows are those up to one id (or ctid). As an array
    (``= ANY(ARRAY(subquery))``, or ``id IN (subquery)``) the plan followed the statistics, and a table analysed
    while the runner kept it empty got a scan comparing every row with the whole array (one fold of a bench's took
    50 s). The plan is read with the statistics of an empty table and of a full one."""
    table = "product_popularity_deltas" if statement is FOLD_POPULARITY else "product_affinity_deltas"
    fill = {"product_popularity_deltas": "INSERT INTO product_popularity_deltas (product_id, weight, trend) "
                                         "SELECT 'bound-' || g % 50, 1, 1 FROM generate_series(1, 5000) g",
            "product_affinity_deltas": "INSERT INTO product_affinity_deltas (product_id, neighbour_id, weight) "
                                       "SELECT 'bound-' || g % 50, 'bound-n' || g % 7, 1 FROM generate_series(1, 5000) g"}
    for analysed_full in (False, True):
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.execute(text(f"DELETE FROM {table}"))
            if analysed_full:
                conn.execute(text(fill[table]))
            conn.execute(text(f"ANALYZE {table}"))
            conn.execute(text(fill[table]))
            cursor = conn.connection.dbapi_connection.cursor()
            cursor.execute("EXPLAIN " + statement, {"chunk": FOLD_CHUNK_ROWS})
            plan = "\n".join(row[0] for row in cursor.fetchall())
            cursor.execute(statement, {"chunk": 3000})
            first = cursor.fetchone()[0]
            cursor.execute(statement, {"chunk": 3000})
            second = cursor.fetchone()[0]
            transaction.rollback()
        deleting = plan.split("Delete on", 1)[1].split("CTE ", 1)[0]
        assert "ANY" not in deleting and "Join" not in deleting and "Nested Loop" not in deleting, plan
        # Chunks of exactly the rows asked for, then what is left (5,000 rows, or 10,000 with the analysed ones).
        assert (first, second) == (3000, 3000 if analysed_full else 2000)
