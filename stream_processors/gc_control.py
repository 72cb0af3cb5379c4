"""Python's cyclic garbage collector in the worker: deferred during a batch, and its pauses measured.

A flood batch holds hundreds of thousands of live objects (decoded events, rows) until it is written.
With the collector on, they survive the young generations while the batch runs and set off full
collections, each walking every object in the process and stopping the event loop, only to find
them alive. Reference counting frees a batch's objects when it ends; with collection deferred
until then, the collector never sees them. Cyclic garbage made meanwhile waits for the next
collection after the batch.
"""

import gc
import time
from contextlib import contextmanager

from spoor.stream_processors.worker_metrics import GC_PAUSE_SECONDS


@contextmanager
def collection_deferred():
    """No automatic collection inside the block (unless the collector was off already)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def watch_gc_pauses() -> None:
    """Observe every collection's duration in ``spoor_worker_gc_pause_seconds``."""
    started = {}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started["at"] = time.perf_counter()
        elif "at" in started:
            GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(time.perf_counter() - started.pop("at"))

    gc.callbacks.append(on_gc)
