"""A small blocking client for the collector's batch endpoint (demo, benchmark, tests)."""

import base64
import http.client
import time
from urllib.parse import urlsplit

import orjson


class CollectorClient:
    def __init__(self, url: str, write_key: str, timeout: float = 30.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        return self.post_json(path, orjson.dumps(body))

    def post_json(self, path: str, payload: bytes) -> tuple[int, dict]:
        """POST an already serialised JSON body."""
        status, body, _ = self._post(path, payload)
        return status, body

    def _post(self, path: str, payload: bytes) -> tuple[int, dict, str | None]:
        """(status, JSON body, Retry-After header)."""
        for attempt in range(2):  # one reconnect if the kept-alive connection was closed
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.connection.request("POST", path, payload, {"Content-Type": "application/json",
                                                                "Authorization": self.auth})
                response = self.connection.getresponse()
                data = response.read()
                return response.status, (orjson.loads(data) if data else {}), response.getheader("Retry-After")
            except (ConnectionError, http.client.HTTPException):
                self.connection.close()
                self.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def send_batch(self, messages: list[dict], retries: int = 10) -> tuple[int, dict]:
        """Post a batch; retry on 429/503 as a Segment client would. Returns the final answer."""
        return self.send_batch_json(orjson.dumps({"batch": messages}), retries)

    def send_batch_json(self, payload: bytes, retries: int = 10) -> tuple[int, dict]:
        """``send_batch`` for a body serialised in advance (the benchmark's hot loop).

        Waits as long as the collector's ``Retry-After`` says, else backs off exponentially.
        """
        for attempt in range(retries + 1):
            status, body, retry_after = self._post("/v1/batch", payload)
            if status not in (429, 503) or attempt == retries:
                return status, body
            backoff = min(5.0, 0.2 * 2 ** attempt)
            time.sleep(min(60.0, float(retry_after)) if retry_after and retry_after.isdigit() else backoff)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
