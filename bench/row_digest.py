"""A digest of every row the pipeline writes for one fixed input: equal digests, equal rows.

    .venv/bin/python bench/row_digest.py [--url URL] [--database-url URL] [--write-key KEY] [--dump DIR]

Run it on a FRESH stack (`bench/ab.sh` does, before its benchmark): it posts a fixed input, waits until
the pipeline is quiet, then digests every table of the database (sha256 of its rows, sorted, as JSON
arrays of the kept columns) and prints `digest_<table>: <hex> <rows>` lines and `rows_digest:` over all.
Settings (URLs, key) default to Spoor's, from the environment like the processes'.

The input: `simulate(users, seed=SEED, start=START)` (fixed messageIds, users and event times; no sentAt,
so the collector keeps the timestamps as sent), in order, in batches of 100 from one connection, so each
Kafka partition gets its records in the same order every time; then a batch of messages the collector
refuses (the dead-letter path). The worker is event-time driven (a partition's watermark is its latest
event time), so the rows depend on the input, not on when it arrives, except for the columns and
tables below.

`--dump DIR` also writes each table's rows (JSON lines, sorted; the first line the column names), which
`compare_dumps` (and `--compare DIR DIR`) use to say which tables and columns differ, over the columns both
have: a commit that adds a column or a table still shows whether the rows it shared are the same.
"""

import argparse
import hashlib
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from spoor.cli.collector_client import CollectorClient  # noqa: E402
from spoor.cli.simulate import simulate  # noqa: E402
from spoor.settings import Settings  # noqa: E402

SEED = 20261203
START = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)  # a Monday; inside the default 395-day retention
BATCH = 100

# Columns left out (`column` wherever it appears, `table.column` in that table), and why: they record when
# something happened on this run (a process's clock), not what the input made.
VARYING_COLUMNS = {
    "received_at": "the collector's clock at receipt",
    "persisted_at": "the worker's transaction time",
    "written_at": "the worker's clock (metric windows)",
    "updated_at": "a writer's clock",
    "created_at": "a writer's clock",
    "replayed_at": "the replay's clock",
    "segment_members.entered_at": "the segments runner's pass time",
    "segment_transitions.at": "the segments runner's pass time",
    "segment_transitions.published_at": "the segments runner's outbox publish time",
    "segments.last_full_recompute_at": "the segments runner's clock",
    "computed_at": "a runner's clock",
}
# Columns filled from a sequence or identity (found in the catalog) are left out too: their values
# follow the order of concurrent inserts. Tables left out whole, and why:
VARYING_TABLES = {
    "alembic_version": "the schema's version, not a row the pipeline writes",
    "segment_cursors": "the segments runner's position: the start time of its last pass",
    "product_recommendations": "refreshed by the recommendations pass on its own wall-clock schedule: a digest "
                               "taken at another moment holds another subset",
    "user_recommendations": "the same",
    "product_popularity_deltas": "rows the worker appended, waiting for the segments runner's fold (migration 0031): "
                                 "empty once it folded, and the folded rows are in product_popularity",
    "product_affinity_deltas": "the same (product_affinity)",
    "product_affinity": "differed between two runs of one commit (8b598c6) on this input: 2838 vs 2836 rows, "
                        "the weights of ~20 pairs. Probably batch boundaries: within a batch a product pairs "
                        "with the user's recent views and cart adds, across batches with the profile's "
                        "viewed products only (stream_processors/interests.py, recent_activity)",
}
# Views digested as tables: they show rows that a table of an older commit held, so an A/B across the change
# still compares those rows.
TABLES_NOW_VIEWS = {
    "session_journeys": "a table until migration 0033; since, the journey's columns of sessions",
}


def fixed_input(events: int) -> tuple[list[bytes], list[dict]]:
    """Batches of the fixed simulated input (at least ``events`` messages, whole journeys) and the bad ones."""
    users, messages = max(1, events // 8), []
    while len(messages) < events:
        messages = simulate(users, seed=SEED, start=START)
        users += max(1, (events - len(messages)) // 8 + 1)
    bad = [{"type": "track", "userId": f"user-{SEED}-bad-{i}", "messageId": f"digest-bad-{i}",
            "timestamp": "not a time", "event": "Product Viewed"} for i in range(3)]
    return [orjson.dumps({"batch": messages[i:i + BATCH]}) for i in range(0, len(messages), BATCH)], messages + bad


def send(url: str, key: str, bodies: list[bytes], bad: list[dict]) -> None:
    client = CollectorClient(url, key)
    try:
        for body in bodies:
            status, reply = client.send_batch_json(body, retries=20)
            if status != 200:
                sys.exit(f"the collector refused a batch of the fixed input: {status} {reply}")
        status, reply = client.send_batch_json(orjson.dumps({"batch": bad}), retries=20)
        if status not in (200, 400):
            sys.exit(f"the batch of bad messages: {status} {reply}")
    finally:
        client.close()


def tables(conn) -> dict[str, list[str]]:
    """table -> kept columns, in order; partitions are read through their parent."""
    rows = conn.execute(text("""
        SELECT c.relname, a.attname,
               pg_get_serial_sequence(quote_ident(c.relname), a.attname) IS NOT NULL OR a.attidentity <> ''
          FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
         WHERE c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
           AND (c.relkind IN ('r', 'p') OR (c.relkind = 'v' AND c.relname = ANY(:views)))
           AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY c.relname, a.attnum"""), {"views": list(TABLES_NOW_VIEWS)}).all()
    kept: dict[str, list[str]] = {}
    for table, column, serial in rows:
        if table in VARYING_TABLES:
            continue
        kept.setdefault(table, [])
        if not serial and column not in VARYING_COLUMNS and f"{table}.{column}" not in VARYING_COLUMNS:
            kept[table].append(column)
    return kept


def rounded(value):
    """Floats to 9 significant digits, in nested lists and objects too: a sum of floats (the interests'
    forward-decayed weights) depends on the order of its terms, i.e. on how records fell into batches."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def table_rows(conn, table: str, columns: list[str]) -> list[str]:
    cols = ", ".join(f'"{c}"' for c in columns)
    rows = conn.execute(text(f'SELECT json_build_array({cols})::text FROM "{table}"')).scalars().all()
    return sorted(orjson.dumps(rounded(orjson.loads(row))).decode() for row in rows)


def digest_all(engine, dump: Path | None = None) -> tuple[str, dict[str, tuple[str, int]]]:
    per_table, whole = {}, hashlib.sha256()
    with engine.connect() as conn:
        for table, columns in tables(conn).items():
            rows = table_rows(conn, table, columns)
            h = hashlib.sha256(orjson.dumps(columns))
            for row in rows:
                h.update(row.encode() + b"\n")
            per_table[table] = (h.hexdigest()[:16], len(rows))
            whole.update(f"{table} {per_table[table][0]}\n".encode())
            if dump is not None:
                dump.mkdir(parents=True, exist_ok=True)
                (dump / f"{table}.jsonl").write_text("\n".join([orjson.dumps(columns).decode(), *rows]) + "\n")
    return whole.hexdigest()[:16], per_table


def wait_quiet(engine, messages: int, timeout: float) -> None:
    """Until the input's events are in `events` and two digests 5 s apart are equal (the worker's later
    batches, the dead letters and the runners' passes are done)."""
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while conn.execute(text("SELECT count(*) FROM events WHERE event_time >= :t"),
                           {"t": START}).scalar() < messages:
            if time.monotonic() > deadline:
                sys.exit("the fixed input did not all reach `events`")
            time.sleep(1)
            conn.rollback()
    previous = None
    while True:
        current = digest_all(engine)[0]
        if current == previous:
            return
        if time.monotonic() > deadline:
            sys.exit("the rows kept changing")
        previous = current
        time.sleep(5)


def read_dump(path: Path) -> tuple[list[str], list[list]]:
    lines = path.read_text().splitlines()
    return orjson.loads(lines[0]), [rounded(orjson.loads(line)) for line in lines[1:]]


def compare_dumps(a: Path, b: Path, names: tuple[str, str] | None = None) -> list[str]:
    """Per table, what differs between two dumps, over the columns both have."""
    out = []
    name_a, name_b = names or (str(a), str(b))
    names_a, names_b = ({p.stem for p in d.glob("*.jsonl") if p.stem not in VARYING_TABLES} for d in (a, b))
    for only, where in ((names_a - names_b, name_a), (names_b - names_a, name_b)):
        if only:
            out.append(f"tables only in {where}: {', '.join(sorted(only))}")
    for table in sorted(names_a & names_b):
        cols_a, rows_a = read_dump(a / f"{table}.jsonl")
        cols_b, rows_b = read_dump(b / f"{table}.jsonl")
        at_a, at_b = ({c: i for i, c in enumerate(cols)} for cols in (cols_a, cols_b))
        cols_a, cols_b = ([c for c in cols if c not in VARYING_COLUMNS and f"{table}.{c}" not in VARYING_COLUMNS]
                          for cols in (cols_a, cols_b))  # dumps made with an older list of them
        common = [c for c in cols_a if c in cols_b]
        project_a = sorted(orjson.dumps([r[at_a[c]] for c in common]) for r in rows_a)
        project_b = sorted(orjson.dumps([r[at_b[c]] for c in common]) for r in rows_b)
        extra = [f"{c} only in {name_a}" for c in cols_a if c not in cols_b]
        extra += [f"{c} only in {name_b}" for c in cols_b if c not in cols_a]
        if project_a == project_b and not extra:
            continue
        if project_a == project_b:
            out.append(f"{table}: same rows over the common columns ({len(rows_a)}); {', '.join(extra)}")
            continue
        differing = [c for c in common if sorted(orjson.dumps(r[at_a[c]]) for r in rows_a)
                     != sorted(orjson.dumps(r[at_b[c]]) for r in rows_b)]
        out.append(f"{table}: rows differ ({len(rows_a)} vs {len(rows_b)} rows; "
                   f"{len(set(project_a) ^ set(project_b))} distinct rows in one only); "
                   f"columns whose values differ: {', '.join(differing) or 'none alone'}"
                   + (f"; {', '.join(extra)}" if extra else ""))
    return out


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://{settings.collector_host}:{settings.collector_port}")
    parser.add_argument("--database-url", default=settings.database_url)
    parser.add_argument("--write-key", default=settings.demo_write_key)
    parser.add_argument("--events", type=int, default=2000, help="size of the fixed input (whole journeys)")
    parser.add_argument("--dump", type=Path, help="write each table's rows here")
    parser.add_argument("--no-send", action="store_true", help="digest what is there (the input was sent)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--compare", nargs=2, type=Path, metavar="DIR", help="compare two dumps and exit")
    args = parser.parse_args()
    if args.compare:
        differences = compare_dumps(*args.compare)
        print("\n".join(differences) or "same rows")
        sys.exit(1 if differences else 0)
    engine = create_engine(args.database_url)
    bodies, messages = fixed_input(args.events)
    good = len(messages) - 3
    if not args.no_send:
        print(f"sending the fixed input: {good} events (seed {SEED}, from {START.isoformat()}) and 3 bad ones",
              flush=True)
        send(args.url, args.write_key, bodies, messages[good:])
    wait_quiet(engine, good, args.timeout)
    whole, per_table = digest_all(engine, args.dump)
    print(f"left out: {'; '.join(f'{c} ({why})' for c, why in {**VARYING_TABLES, **VARYING_COLUMNS}.items())}; "
          f"columns filled from a sequence (insert order)")
    for table, (digest, rows) in per_table.items():
        print(f"digest_{table}: {digest} {rows}")
    print(f"rows_digest: {whole}")


if __name__ == "__main__":
    main()
