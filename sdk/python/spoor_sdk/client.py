"""The client: calls enqueue messages; one background thread batches, sends and retries them.

Guarantees and limits:
- A call never blocks on the network. It returns True once the message is queued.
- The queue is bounded (``max_queue_size``). When it is full the NEW message is dropped: the call
  returns False, ``stats.dropped`` grows and ``on_drop(message, reason)`` is called. Messages over
  ``max_message_bytes`` are dropped the same way (reason "too_large"), since the collector would refuse them.
- Network errors, 408, 429 and 5xx are retried with exponential backoff and full jitter, honouring
  Retry-After; after ``retry.max_retries`` the batch is given up (``stats.failed``, ``on_error``).
- 413 splits the batch in two. Events the collector refuses as invalid are counted in ``stats.rejected``
  and passed to ``on_error``: they are already in Spoor's dead letters, so they are not retried.
- ``flush()`` waits until everything queued before it was delivered or given up; ``shutdown()``
  flushes, then stops the thread. It runs at interpreter exit unless ``flush_at_exit=False``.
The queue lives in memory: a process that is killed loses what it had not sent.

Consent per purpose (docs/privacy.md#consent): ``consent(preferences)`` sets the categories every later
message of the client carries as ``context.consent.categoryPreferences``; a call's ``consent=`` option
states them for that message alone (``consent=None``: none), and a ``context`` with its own ``consent``
is left as it is.
"""

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spoor_sdk import messages
from spoor_sdk.errors import BatchTooLarge, Rejected, RetryableError
from spoor_sdk.http import HttpTransport
from spoor_sdk.retry import RetryPolicy

log = logging.getLogger("spoor_sdk")
MAX_MESSAGE_BYTES = 32 * 1024   # the collector's per-event limit
MAX_BATCH_BYTES = 480 * 1024    # under the collector's 512 KiB body limit


@dataclass
class Stats:
    queued: int = 0     # accepted by a call
    sent: int = 0       # acknowledged by Spoor
    dropped: int = 0    # refused by a call: queue full, too large, or client shut down
    rejected: int = 0   # refused by the collector as invalid (in Spoor's dead letters)
    failed: int = 0     # given up after retries, or refused as a whole (e.g. 401)
    retries: int = 0    # delivery attempts that were retried


class Client:
    def __init__(self, write_key: str | None = None, host: str = "http://127.0.0.1:8080", *,
                 transport=None, max_queue_size: int = 10_000, batch_size: int = 100,
                 flush_interval: float = 0.5, retry: RetryPolicy = RetryPolicy(),
                 on_drop: Callable[[dict, str], Any] | None = None,
                 on_error: Callable[[Exception, list[dict]], Any] | None = None,
                 flush_at_exit: bool = True, consent: dict[str, bool] | None = None):
        if transport is None:
            if not write_key:
                raise ValueError("a write key is required for the HTTP transport")
            transport = HttpTransport(host, write_key)
        self.transport = transport
        self.max_queue_size = max_queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry = retry
        self.on_drop = on_drop
        self.on_error = on_error
        self.stats = Stats()
        self._consent = None if consent is None else messages.checked_preferences(consent)
        self._queue: deque[tuple[int, dict, bytes]] = deque()
        self._lock = threading.Condition()
        self._enqueued_seq = 0   # sequence number of the last queued message
        self._done_seq = 0       # every message up to this one is delivered or given up
        self._flush_wanted = False
        self._closed = False
        self._give_up = threading.Event()  # set when shutdown's time is up: stop retrying
        self._thread = threading.Thread(target=self._run, name="spoor-sdk-sender", daemon=True)
        self._thread.start()
        if flush_at_exit:
            atexit.register(self.shutdown)

    # --- consent ---

    def consent(self, preferences: dict[str, bool] | None) -> None:
        """The categories every later message carries as ``context.consent.categoryPreferences``, e.g.
        ``{"analytics": True, "marketing": False, "personalisation": True}`` (keys: ``analytics``,
        ``marketing``, ``personalisation`` or a consent manager's ids SPOOR_CONSENT_CATEGORIES maps); None:
        messages state none. ValueError for anything but a mapping of at most 100 names to booleans."""
        self._consent = None if preferences is None else messages.checked_preferences(preferences)

    def consent_preferences(self) -> dict[str, bool] | None:
        """A copy of the categories set by ``consent()``, or None."""
        return None if self._consent is None else dict(self._consent)

    def _with_consent(self, options: dict) -> dict:
        if "consent" not in options and self._consent is not None and "consent" not in (options.get("context") or {}):
            options["consent"] = self._consent
        return options

    # --- the tracking API (Segment spec names) ---
    # Every call also takes the keyword options anonymous_id, context, timestamp, message_id, integrations, consent.

    def track(self, user_id=None, event: str = "", properties: dict | None = None, **options) -> bool:
        if not isinstance(event, str) or not event.strip():
            raise ValueError("track: an event name is required")
        return self._enqueue(messages.build("track", {"event": event, "properties": properties or {}},
                                            user_id=user_id, **self._with_consent(options)))

    def page(self, user_id=None, name: str | None = None, properties: dict | None = None, **options) -> bool:
        return self._enqueue(messages.build("page", {"name": name, "properties": properties or {}},
                                            user_id=user_id, **self._with_consent(options)))

    def screen(self, user_id=None, name: str | None = None, properties: dict | None = None, **options) -> bool:
        return self._enqueue(messages.build("screen", {"name": name, "properties": properties or {}},
                                            user_id=user_id, **self._with_consent(options)))

    def identify(self, user_id=None, traits: dict | None = None, **options) -> bool:
        return self._enqueue(messages.build("identify", {"traits": traits or {}}, user_id=user_id,
                                            **self._with_consent(options)))

    # --- E-commerce spec v2 helpers ---

    def product_viewed(self, user_id=None, product_id=None, **properties) -> bool:
        return self._commerce("Product Viewed", user_id, product_id=product_id, **properties)

    def product_added(self, user_id=None, product_id=None, quantity: int = 1, **properties) -> bool:
        return self._commerce("Product Added", user_id, product_id=product_id, quantity=quantity, **properties)

    def product_removed(self, user_id=None, product_id=None, quantity: int = 1, **properties) -> bool:
        return self._commerce("Product Removed", user_id, product_id=product_id, quantity=quantity, **properties)

    def checkout_started(self, user_id=None, **properties) -> bool:
        return self._commerce("Checkout Started", user_id, **properties)

    def order_completed(self, user_id=None, order_id=None, revenue=None, products: list | None = None,
                        **properties) -> bool:
        return self._commerce("Order Completed", user_id, order_id=order_id, revenue=revenue,
                              products=products, **properties)

    def _commerce(self, event: str, user_id, **properties) -> bool:
        options = {k: properties.pop(k) for k in messages.CALL_OPTIONS if k in properties}
        return self.track(user_id, event, {k: v for k, v in properties.items() if v is not None}, **options)

    # --- lifecycle ---

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every message queued before this call is delivered or given up. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._enqueued_seq
            self._flush_wanted = True
            self._lock.notify_all()
            while self._done_seq < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop accepting messages, deliver what is queued (within ``timeout``), stop the thread.

        True when everything queued was delivered or given up for a reason other than time.
        """
        with self._lock:
            if self._closed and not self._thread.is_alive():
                return not self._queue
            self._closed = True
        flushed = self.flush(timeout)
        if not flushed:
            self._give_up.set()  # in-flight retries end; what is left counts as failed
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout=30)
        close = getattr(self.transport, "close", None)
        if close:
            close()
        atexit.unregister(self.shutdown)
        return flushed

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    # --- the queue ---

    def _enqueue(self, message: dict) -> bool:
        encoded = messages.encode(message)
        if len(encoded) > MAX_MESSAGE_BYTES:
            return self._drop(message, "too_large")
        with self._lock:
            if self._closed:
                reason = "closed"
            elif len(self._queue) >= self.max_queue_size:
                reason = "queue_full"
            else:
                self._enqueued_seq += 1
                self._queue.append((self._enqueued_seq, message, encoded))
                self.stats.queued += 1
                if len(self._queue) in (1, self.batch_size):  # the first starts the interval; a full batch goes now
                    self._lock.notify_all()
                return True
        return self._drop(message, reason)

    def _drop(self, message: dict, reason: str) -> bool:
        with self._lock:
            self.stats.dropped += 1
        log.warning("spoor-sdk dropped a %s message: %s", message.get("type"), reason)
        _notify(self.on_drop, message, reason)
        return False

    def _next_batch(self) -> list[tuple[int, dict, bytes]] | None:
        """Up to batch_size messages once a batch is full, flush_interval passed, or a flush is wanted."""
        with self._lock:
            while not self._queue:
                if self._closed:
                    return None
                self._flush_wanted = False
                self._lock.wait()
            deadline = time.monotonic() + self.flush_interval
            while (len(self._queue) < self.batch_size and not self._flush_wanted and not self._closed
                   and (remaining := deadline - time.monotonic()) > 0):
                self._lock.wait(remaining)
            batch, size = [], 0
            while self._queue and len(batch) < self.batch_size and size + len(self._queue[0][2]) < MAX_BATCH_BYTES:
                item = self._queue.popleft()
                batch.append(item)
                size += len(item[2]) + 1
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._deliver(batch)
            except Exception as err:  # a bug in a callback or transport must not kill the sender
                log.exception("spoor-sdk: delivering a batch failed")
                self._give_up_on(batch, err)
            with self._lock:
                self._done_seq = batch[-1][0]
                self._lock.notify_all()

    def _deliver(self, batch: list[tuple[int, dict, bytes]]) -> None:
        msgs = [m for _, m, _ in batch]
        if self._give_up.is_set():  # shutdown's time is up: what is left is not even tried
            self._give_up_on(batch, TimeoutError("shutdown timed out before this batch was sent"))
            return
        attempt = 0
        while True:
            try:
                delivery = self.transport.send(msgs, [e for _, _, e in batch])
            except RetryableError as err:
                if attempt >= self.retry.max_retries or self._give_up.is_set():
                    self._give_up_on(batch, err)
                    return
                delay = self.retry.delay(attempt, err.retry_after)
                log.info("spoor-sdk: %s; retry %d in %.2fs", err, attempt + 1, delay)
                self.stats.retries += 1
                attempt += 1
                if self._give_up.wait(delay):
                    self._give_up_on(batch, err)
                    return
                continue
            except BatchTooLarge as err:
                if len(batch) == 1:
                    self._give_up_on(batch, err)
                    return
                half = len(batch) // 2
                self._deliver(batch[:half])
                self._deliver(batch[half:])
                return
            except Rejected as err:
                self._give_up_on(batch, err)
                return
            self.stats.sent += delivery.accepted
            if delivery.rejected:
                self.stats.rejected += len(delivery.rejected)
                log.warning("spoor-sdk: the collector rejected %d invalid events: %s",
                            len(delivery.rejected), delivery.rejected[:3])
                refused = [msgs[r["index"]] for r in delivery.rejected
                           if isinstance(r.get("index"), int) and 0 <= r["index"] < len(msgs)]
                _notify(self.on_error, Rejected(f"{len(refused)} invalid events: {delivery.rejected}", 400), refused)
            return

    def _give_up_on(self, batch: list, err: Exception) -> None:
        self.stats.failed += len(batch)
        log.error("spoor-sdk: gave up on %d messages: %s", len(batch), err)
        _notify(self.on_error, err, [m for _, m, _ in batch])


def _notify(callback, *args) -> None:
    """Run a user callback; its failure is logged, never allowed to stop delivery."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("spoor-sdk: callback %r failed", callback)
