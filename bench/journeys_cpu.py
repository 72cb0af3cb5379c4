"""CPU per event that journeys (stream_processors/journeys.py) add to the worker's fold, in-process: no Kafka,
no PostgreSQL. The fold of bench/fold_cpu.py (ProfileTracker.process, analytics on) runs on the same events
with journeys on and off (``Journey`` methods that keep nothing), alternately in one process so that the
machine's load falls on both alike; medians of the runs. The cyclic collector is deferred during each batch,
as in the worker. Figures, not a test.

    .venv/bin/python bench/journeys_cpu.py            # fold_cpu's events: 60,000 events of 9,000 users
    .venv/bin/python bench/journeys_cpu.py dense      # 600 users browsing: sessions of ~100 events
"""
import asyncio
import gc
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone

from spoor.events import Event, EventKind, encode_events
from spoor.settings import Settings
from spoor.stream_processors import journeys
from spoor.stream_processors.analytics_tracker import AnalyticsTracker
from spoor.stream_processors.app import analytics_rules
from spoor.stream_processors.gc_control import collection_deferred
from spoor.stream_processors.profile_tracker import ProfileTracker

RUNS = 4


class Table(dict):
    async def changelog_durable(self):
        pass


class Writer:
    def write_batch(self, *args, **kwargs):
        pass


async def nothing(*args, **kwargs):
    pass


def workload(dense: bool) -> list:
    rng, t0 = random.Random(7), datetime(2026, 11, 1, tzinfo=timezone.utc)
    kinds = [EventKind.PAGE_VIEW] * 4 + [EventKind.PRODUCT_VIEW] * 3 + [EventKind.CART_ADD, EventKind.PURCHASE]
    users, step = (600, 0.1) if dense else (9000, 1)  # dense: a user's events ~60 s apart
    events = []
    for n in range(60000):
        user, kind, at = f"user-{rng.randrange(users)}", rng.choice(kinds), t0 + timedelta(seconds=n * step)
        extra = {"product_id": f"p{rng.randrange(500)}", "category": "shoes", "price": "9.99"}
        if kind == EventKind.PAGE_VIEW:
            extra = {"page_url": f"https://shop.example/c/{rng.randrange(50)}"}
        elif kind == EventKind.PURCHASE:
            extra = {"order_id": f"o{n}", "revenue": "19.98"}
        events.append(Event(event_id=f"e-{n:08d}", kind=kind, name="Category", user_key=user, event_time=at,
                            received_at=at, source="web", **extra))
    return [(hash(e.user_key) % 4, encode_events([e])) for e in events]


def fold_cpu_us(records: list) -> float:
    tracker = ProfileTracker(Table(), Writer(), 512, nothing, AnalyticsTracker(analytics_rules(Settings()), 4, nothing))
    arrived = datetime(2026, 11, 3, tzinfo=timezone.utc).timestamp()

    async def run():
        for start in range(0, len(records), 2000):
            with collection_deferred():  # as the worker runs a batch (stream_processors/app.py)
                await tracker.process([(p, r, arrived) for p, r in records[start:start + 2000]])
    started = time.process_time()
    asyncio.run(run())
    return (time.process_time() - started) / len(records) * 1e6


def main() -> None:
    records = workload(len(sys.argv) > 1 and sys.argv[1] == "dense")
    real = (journeys.Journey.add, journeys.Journey.summary)
    empty = journeys.Journey().summary()
    off = (lambda self, event, at, repeated_order=False: None, lambda self: empty)
    figures = {"on": [], "off": []}
    for run in range(RUNS):
        pair = [("off", off), ("on", real)]
        for name, (add, summary) in pair if run % 2 else pair[::-1]:  # either first in turn
            journeys.Journey.add, journeys.Journey.summary = add, summary
            gc.collect()
            figures[name].append(fold_cpu_us(records))
    on, off_ = statistics.median(figures["on"]), statistics.median(figures["off"])
    print(f"cpu_us_per_event journeys off {off_:.1f} on {on:.1f}: +{on - off_:.1f} ({(on / off_ - 1) * 100:.1f}%)"
          f"  runs off {[round(f) for f in figures['off']]} on {[round(f) for f in figures['on']]}")


if __name__ == "__main__":
    main()
