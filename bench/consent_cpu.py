"""What consent per purpose adds to the hot paths, in CPU time per event (no broker, no database):

- collector: ``normalize`` of a Segment message with ``context.consent.categoryPreferences`` (4 categories)
  against the same message without it;
- worker: decoding a record of events that carry a statement against events that carry none (the field
  is on the canonical event), and ``ConsentGate.gate`` over batches of 1,000 events of 300 users with
  ``--withdrawn`` rows held (a tenth of the users withdrew analytics, every event states consent).

    .venv/bin/python bench/consent_cpu.py [--events 50000] [--withdrawn 100000]
"""

import argparse
import asyncio
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spoor.consent import ANALYTICS  # noqa: E402
from spoor.events import Event, decode_record, encode_events  # noqa: E402
from spoor.ingest.normalize import normalize  # noqa: E402
from spoor.storage.consent_store import StoredConsent  # noqa: E402
from spoor.stream_processors.consent_gate import ConsentGate, ConsentReads  # noqa: E402

NOW = datetime(2026, 12, 3, tzinfo=timezone.utc)
PREFERENCES = {"Analytics": True, "Advertising": False, "Personalization": True, "Functional": True}


def cpu_us(work, n: int, runs: int) -> float:
    """Median CPU microseconds per unit of ``work()`` (which does ``n`` units) over ``runs``."""
    samples = []
    for _ in range(runs):
        started = time.process_time()
        work()
        samples.append((time.process_time() - started) / n * 1e6)
    return statistics.median(samples)


def message(i: int, consent: bool) -> dict:
    context = {"page": {"url": "https://shop.example/p/1"}, "sessionId": f"s{i % 300}"}
    if consent:
        context["consent"] = {"categoryPreferences": PREFERENCES}
    return {"type": "track", "event": "Product Viewed", "userId": f"u{i % 300}", "messageId": f"m{i}",
            "context": context, "properties": {"product_id": f"P{i % 50}", "price": 12.5, "category": "mugs"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--withdrawn", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n = args.events

    for consent in (False, True):
        messages = [message(i, consent) for i in range(n)]
        us = cpu_us(lambda: [normalize(m, received_at=NOW, source="web") for m in messages], n, args.runs)
        print(f"collector normalize, {'with' if consent else 'without'} categoryPreferences: {us:.2f} us/event")

    statement = "analytics,personalisation"
    for consent in (None, statement):
        events = [Event(event_id=f"e{i}", kind="product_view", name="Product Viewed", user_key=f"u{i % 300}",
                        event_time=NOW, received_at=NOW + timedelta(microseconds=i), consent=consent)
                  for i in range(n)]
        records = [encode_events(events[i:i + 500]) for i in range(0, n, 500)]
        us = cpu_us(lambda: [decode_record(r) for r in records], n, args.runs)
        print(f"worker decode, events {'with' if consent else 'without'} a statement: {us:.2f} us/event")

    rows = [StoredConsent(f"w{i}", frozenset(), frozenset({ANALYTICS})) for i in range(args.withdrawn)]
    rows += [StoredConsent(f"u{i}", frozenset({ANALYTICS}), None) for i in range(0, 300, 10)]
    reads = ConsentReads(withdrawn=lambda limit: (rows, NOW), changed=lambda since: ([], NOW),
                         users=lambda keys: [], record=lambda statements: None)
    gate = ConsentGate(reads, max_users=len(rows) + 1000, refresh_s=3600)  # room for the 300 users
    asyncio.run(gate.refresh())
    batches = [[(0, e) for e in events[i:i + 1000]] for i in range(0, n, 1000)]

    async def gate_all():
        for batch in batches:
            await gate.gate(batch)
    us = cpu_us(lambda: asyncio.run(gate_all()), n, args.runs)
    print(f"worker consent gate, {len(gate.book):,} rows held, every event with a statement: {us:.2f} us/event")


if __name__ == "__main__":
    main()
