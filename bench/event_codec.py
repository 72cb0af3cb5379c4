"""The event model on the hot path, old against new, in CPU time per event (no broker, no database):

- collector: ``Intake.records`` of simulated Segment batches (size checks, normalise and validate,
  edge enrichment, partitioning, encoding the events-topic records), and ``normalize`` alone;
- worker: ``decode_record`` of the records that intake wrote.

"old" is spoor/events.py, ingest/normalize.py and ingest/intake.py as they were at ``--old`` (loaded
from git into modules of their own), "new" the working tree's. Rounds alternate old and new; each
figure is the median over the rounds. Before timing, both directions are checked on the same input:
new records must be byte-identical to old ones, each side must decode the other's records into equal
events, and both must give the same answer to hostile messages (``--hostile``).

    .venv/bin/python bench/event_codec.py [--users 2000] [--rounds 7] [--batch 100] [--old 6331a74]
"""

import argparse
import re
import statistics
import subprocess
import sys
import time
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import spoor.events as new_events  # noqa: E402
from spoor.cli.simulate import simulate  # noqa: E402
from spoor.ingest import intake as new_intake  # noqa: E402
from spoor.ingest import normalize as new_normalize  # noqa: E402

OLD = "6331a74"  # main before the msgspec events (issue 25)
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def modules_at(rev: str) -> types.SimpleNamespace:
    """spoor.events, spoor.ingest.normalize and spoor.ingest.intake as they were at ``rev``."""
    tag = re.sub(r"\W", "_", rev)
    loaded = {}
    for name, path in (("events", "spoor/events.py"), ("normalize", "ingest/normalize.py"),
                       ("intake", "ingest/intake.py")):
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                                text=True).stdout
        source = source.replace("from spoor.events import", f"from events_at_{tag}_events import")
        source = source.replace("from spoor.ingest.normalize import", f"from events_at_{tag}_normalize import")
        module = types.ModuleType(f"events_at_{tag}_{name}")
        sys.modules[module.__name__] = module
        exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
        loaded[name] = module
    return types.SimpleNamespace(**loaded)


def requests(users: int, batch: int) -> list[list[dict]]:
    messages = simulate(users, seed=11, start=NOW - timedelta(hours=2), channels=True)
    return [messages[i:i + batch] for i in range(0, len(messages), batch)]


def facts(side) -> object:
    return side.intake.RequestFacts(received_at=NOW, source="web", sent_at=None, user_agent=UA, peer_ip="203.0.113.9")


def make_intake(side):
    return side.intake.Intake("events", "dead", 12, 32 * 1024)


def records_of(side, batches) -> list[bytes]:
    intake, request = make_intake(side), facts(side)
    out = []
    for messages in batches:
        records, rejected, _ = intake.records(messages, request)
        assert not rejected, rejected
        out += [value for _topic, _partition, _key, value in records]
    return out


HOSTILE = [
    {"type": "track", "userId": "u", "event": "Product Added", "properties": {"price": -1}},
    {"type": "track", "userId": "u", "event": "Product Added", "properties": {"price": "1e400"}},
    {"type": "track", "userId": "u", "event": "Order Completed", "properties": {"products": [{"price": "0.00001"}]}},
    {"type": "track", "userId": "u", "event": "Order Completed", "properties": {"revenue": 10 ** 15}},
    {"type": "track", "userId": "u" * 257, "event": "X"},
    {"type": "track", "userId": "u", "event": "X" * 300},
    {"type": "track", "userId": "u", "event": "X", "properties": {"category": "c" * 257}},
    {"type": "track", "userId": "u", "event": "Product Added", "properties": {"quantity": 2_000_000}},
    {"type": "track", "userId": "u", "event": "Product Added", "properties": {"currency": "eu1"}},
    {"type": "track", "userId": "u\x00", "event": "X"},
    {"type": "track", "userId": "u", "event": "X", "context": {"page": {"url": "x" * 3000}}},
    {"type": "track", "userId": "u", "event": "X", "context": {"sessionId": "s" * 300}},
    {"type": "track", "userId": "u", "event": "X", "context": {"campaign": {"medium": "m" * 300}}},
    {"type": "track", "userId": "u", "event": "Products Searched", "properties": {"result_count": -1}},
    {"type": "track", "userId": "u", "event": "Order Completed", "properties": {"products": [{"quantity": -1}]}},
    {"type": "track", "userId": "u", "event": "Order Completed",
     "properties": {"products": [{"product_id": "p" * 300}]}},
    {"type": "track", "userId": "u", "event": "Order Completed", "properties": {"products": [{}] * 1001}},
]

# Records a backend could write straight to the topic: (name, fields over a valid event's). Both sides must
# name the same field; the reasons of bounds a message can break at the collector must be the same words too.
SAME_WORDS = {"source too long", "negative price", "price NaN", "price 1e400", "line price", "quantity", "currency",
              "nul", "empty source", "long id", "empty id", "many lines", "line quantity", "visible", "two faults",
              "line nul"}
HOSTILE_RECORDS = [
    ("unknown field", {"colour": "red"}), ("source too long", {"source": "s" * 65}),
    ("negative price", {"price": "-1"}), ("price NaN", {"price": "NaN"}), ("price 1e400", {"price": "1e400"}),
    ("line price", {"products": [{"price": "0.00001"}]}), ("line unknown", {"products": [{"x": 1}]}),
    ("kind", {"kind": "teleport"}), ("time", {"event_time": "yesterday"}), ("quantity", {"quantity": -1}),
    ("currency", {"currency": "eur"}), ("consent", {"consent": "everything"}), ("no id", {"event_id": None}),
    ("nul", {"name": "a\x00b"}), ("bot", {"is_bot": "maybe"}), ("empty source", {"source": ""}),
    ("long id", {"user_id": "u" * 257}), ("empty id", {"event_id": ""}), ("many lines", {"products": [{}] * 1001}),
    ("line quantity", {"products": [{"quantity": 10 ** 7}]}), ("visible", {"visible_ms": 10 ** 13}),
    ("two faults", {"page_url": "x" * 3000, "price": "-1"}), ("line nul", {"products": [{"category": "\x00"}]}),
]


def hostile_answers(side) -> list:
    intake, request = make_intake(side), facts(side)
    _, rejected, _ = intake.records([{**m, "messageId": f"h{i}"} for i, m in enumerate(HOSTILE)], request)
    return [(r["index"], r["field"], r["reason"]) for r in rejected]


def record_failure(side, raw: bytes) -> tuple | None:
    """Where decoding the record fails, and the field and reason of the worker's dead letter for the
    event (it validates a failed record's events one by one)."""
    try:
        side.events.decode_record(raw)
    except Exception as err:  # noqa: BLE001 - compared, not handled
        first = err.errors()[0]
        try:
            side.events.Event.model_validate(orjson.loads(raw)[-1])
        except Exception as one:  # noqa: BLE001
            return tuple(first["loc"]), tuple(one.errors()[0]["loc"]), one.errors()[0]["msg"]
    return None


def check(old, new, batches) -> None:
    """Both directions on the same input, and the same answers to hostile input."""
    old_records, new_records = records_of(old, batches), records_of(new, batches)
    assert old_records == new_records, "the records differ"
    for raw in old_records:
        assert [e.to_json() for e in new.events.decode_record(raw)] == [
            e.to_json() for e in old.events.decode_record(raw)]
        assert new.events.encode_events(new.events.decode_record(raw)) == raw
        assert old.events.encode_events(old.events.decode_record(raw)) == raw
    assert hostile_answers(old) == hostile_answers(new), (hostile_answers(old), hostile_answers(new))
    valid = {"event_id": "e1", "kind": "purchase", "name": "Order Completed", "user_key": "u",
             "event_time": "2026-12-03T11:00:00Z", "received_at": "2026-12-03T11:00:01Z", "source": "web"}
    for name, fields in HOSTILE_RECORDS:
        raw = orjson.dumps([valid, {**valid, **fields}])
        compared = slice(None) if name in SAME_WORDS else slice(2)
        assert record_failure(old, raw)[compared] == record_failure(new, raw)[compared], (
            name, record_failure(old, raw), record_failure(new, raw))
    print(f"checked: {len(old_records)} records byte-identical and decoded alike both ways; "
          f"{len(HOSTILE)} hostile messages and {len(HOSTILE_RECORDS)} hostile records answered alike", flush=True)


def cpu_us(work, n: int) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000, help="simulated shoppers (~10 events each)")
    parser.add_argument("--batch", type=int, default=100, help="messages per request")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--old", default=OLD)
    args = parser.parse_args()

    old = modules_at(args.old)
    new = types.SimpleNamespace(events=new_events, normalize=new_normalize, intake=new_intake)
    batches = requests(args.users, args.batch)
    messages = [m for batch in batches for m in batch]
    n = len(messages)
    print(f"{n} simulated events in {len(batches)} requests; old = {args.old}, new = working tree", flush=True)
    check(old, new, batches)
    records = records_of(new, batches)

    def collector(side):
        intake, request = make_intake(side), facts(side)
        return lambda: [intake.records(batch, request) for batch in batches]

    def normalize(side):
        return lambda: [side.normalize.normalize(m, received_at=NOW, source="web") for m in messages]

    def worker(side):
        return lambda: [side.events.decode_record(raw) for raw in records]

    figures = {(stage, label): [] for stage in ("collector", "normalize", "worker") for label in ("old", "new")}
    for _ in range(args.rounds):
        for label, side in (("old", old), ("new", new)):
            figures["collector", label].append(cpu_us(collector(side), n))
            figures["normalize", label].append(cpu_us(normalize(side), n))
            figures["worker", label].append(cpu_us(worker(side), n))
    for stage in ("collector", "normalize", "worker"):
        o, w = (statistics.median(figures[stage, label]) for label in ("old", "new"))
        print(f"{stage}_us_per_event old {o:.2f} new {w:.2f} old/new {o / w:.2f}  "
              f"(old runs {' '.join(f'{x:.1f}' for x in figures[stage, 'old'])}; "
              f"new runs {' '.join(f'{x:.1f}' for x in figures[stage, 'new'])})")


if __name__ == "__main__":
    main()
