"""The loop of the segments and campaigns runners: bounded turns, retried after a pause when
PostgreSQL or Kafka fails (doubling up to 30 s), ended by SIGTERM/SIGINT after the current turn, with
``/healthz`` (503 when no turn has completed for a while) and ``/metrics`` on a small HTTP thread."""

import logging
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)
MAX_PAUSE_S = 30.0
TRANSIENT = (SQLAlchemyError, KafkaError, OSError)
TURN_FAILURES = Counter("spoor_segments_turn_failures_total",
                        "Loop turns that failed on PostgreSQL or Kafka and were retried after a pause.", ["process"])
LAST_TURN = Gauge("spoor_segments_last_successful_turn_timestamp_seconds",
                  "Unix time of the last loop turn that completed.", ["process"])


def serve_ops(host: str, port: int, healthy: Callable[[], bool]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = healthy()
                self._answer(200 if ok else 503, b'{"status": "ok"}' if ok else b'{"status": "stalled"}',
                             "application/json")
            else:
                self._answer(404, b"not found", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="spoor-ops", daemon=True).start()
    return server


def stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


class Heartbeat:
    """When the runner last finished a step: a turn, or a paced statement within a long one (/healthz)."""

    def __init__(self):
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()


def paced_by(busy_share: float, stop: threading.Event, heartbeat: Heartbeat) -> Callable[[float], None]:
    """After a step of ``step_s`` seconds, idle so that steps take at most ``busy_share`` of the time."""
    def pace(step_s: float) -> None:
        heartbeat.beat()
        stop.wait(step_s * (1 - busy_share) / busy_share)
    return pace


def run_turns(process: str, turn: Callable[[], None], poll_s: float, stop: threading.Event, host: str,
          port: int, heartbeat: Heartbeat | None = None) -> None:
    heartbeat = heartbeat or Heartbeat()
    stalled_after = max(60.0, 10 * poll_s)
    server = serve_ops(host, port, lambda: time.monotonic() - heartbeat.at < stalled_after) if port else None
    pause = poll_s
    try:
        while not stop.is_set():
            try:
                turn()
            except TRANSIENT as err:
                TURN_FAILURES.labels(process).inc()
                pause = min(MAX_PAUSE_S, pause * 2)
                log.warning("%s turn failed (%s: %s); retrying in %.1f s", process, type(err).__name__, err, pause)
                stop.wait(pause)
                continue
            pause = poll_s
            heartbeat.beat()
            LAST_TURN.labels(process).set_to_current_time()
            stop.wait(poll_s)
    finally:
        if server:
            server.shutdown()
