"""Blocking work (database writes) off the event loop, with retries and a safe way to fail.

A write either completes or the worker process stops before the batch that
depends on it is acknowledged: never "log and carry on". Long CPU work that
stays on the loop yields now and then (``YieldEvery``).
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.exc import DBAPIError, OperationalError

from spoor.exit_codes import RESTART_CODE
from spoor.stream_processors import worker_metrics

log = logging.getLogger(__name__)
WRITES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spoor-write")


def retry_transient(write: Callable, *args, attempts: int = 8, first_delay_s: float = 0.2):
    """Call ``write``; retry when the database is unreachable (backoff ~50 s in all), not on bad data."""
    for attempt in range(attempts):
        try:
            return write(*args)
        except DBAPIError as err:
            if not (isinstance(err, OperationalError) or err.connection_invalidated):
                raise
            worker_metrics.WRITE_FAILURES.inc()
            if attempt == attempts - 1:
                raise
            delay = first_delay_s * 2 ** attempt
            log.warning("database write failed (%s), retry %d/%d in %.1fs", err.__class__.__name__,
                        attempt + 1, attempts - 1, delay)
            time.sleep(delay)


class YieldEvery:
    """Lets other tasks (heartbeats, /metrics) run after every ``units`` of work done on the event loop."""

    def __init__(self, units: int):
        self.units = units
        self.done = 0

    async def after(self, units: int = 1) -> bool:
        """Count ``units`` of work; True when this call yielded."""
        self.done += units
        if self.done < self.units:
            return False
        self.done = 0
        await asyncio.sleep(0)
        return True


async def run_blocking(write: Callable, *args) -> None:
    """Run a write in a thread. If the task is cancelled (shutdown), wait for the write anyway."""
    future = WRITES.submit(retry_transient, write, *args)
    try:
        await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.result()  # the ack that follows a cancelled await must still be true
        raise


async def fail_stop_on_error(step: Awaitable, what: str):
    """The step's result; the process stops if it raises."""
    try:
        return await step
    except Exception:
        log.critical("%s failed", what, exc_info=True)
        fail_stop("stopping the worker before this batch is acknowledged (it is redelivered on restart)")


def fail_stop(reason: str) -> None:
    """Exit at once, before Faust can ack or commit anything more; `spoor worker` restarts the process."""
    log.critical(reason)
    logging.shutdown()
    os._exit(RESTART_CODE)
