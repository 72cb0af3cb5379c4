"""A real local HTTP server that records webhook calls, for campaign tests."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    """Records every POST; ``fail[user_key] = [status, ...]`` answers those statuses first, in order."""

    def __init__(self):
        self.calls: list[dict] = []
        self.fail: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                payload = json.loads(body)
                with receiver.lock:
                    receiver.calls.append({"headers": dict(self.headers), "body": body, "payload": payload})
                    pending = receiver.fail.get(payload["user_key"])
                    status = pending.pop(0) if pending else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"received": status == 200}).encode())

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def calls_for(self, user_key: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["payload"]["user_key"] == user_key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
