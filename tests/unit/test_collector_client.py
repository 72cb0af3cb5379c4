"""The collector client's retry rule, against a small local HTTP server (no collector needed)."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from spoor.cli.collector_client import CollectorClient


def serve(answers: list[tuple[int, dict]]):
    """A server answering the queued (status, headers) in turn; returns (url, requests seen)."""
    seen: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(time.monotonic())
            status, headers = answers.pop(0)
            body = orjson.dumps({"success": status == 200})
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", seen


def test_429_and_503_are_retried_after_the_collectors_retry_after():
    server, url, seen = serve([(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"}), (200, {})])
    try:
        status, body = CollectorClient(url, "key").send_batch([{"type": "track"}])
    finally:
        server.shutdown()
    assert (status, body) == (200, {"success": True})
    assert len(seen) == 3
    # Without Retry-After the first two waits would be 0.2 s and 0.4 s.
    assert seen[1] - seen[0] >= 1.0 and seen[2] - seen[1] >= 1.0


def test_other_answers_are_returned_at_once():
    server, url, seen = serve([(401, {})])
    try:
        status, _ = CollectorClient(url, "key").send_batch([{"type": "track"}])
    finally:
        server.shutdown()
    assert status == 401 and len(seen) == 1
