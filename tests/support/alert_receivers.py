"""HTTP receivers for tests: an Alertmanager-compatible /api/v2/alerts and a signed-webhook endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from spoor.alerts.notifiers import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


class Receiver:
    """Records what it receives. ``fail_first`` answers ``fail_status`` to that many requests (to exercise
    retries and refusals)."""

    def __init__(self, secret: bytes | None = None, fail_first: int = 0, fail_status: int = 503):
        self.secret = secret
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.received: list = []
        self.bad_signatures = 0
        self.failed = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if receiver.failed < receiver.fail_first:
                    receiver.failed += 1
                    self.send_response(receiver.fail_status)
                    self.end_headers()
                    return
                if receiver.secret is not None and not verify(
                        receiver.secret, self.headers.get(TIMESTAMP_HEADER, ""), body,
                        self.headers.get(SIGNATURE_HEADER, "")):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
