"""The HTTP transport: a batch of Segment-spec messages to a collector's ``POST /v1/batch``."""

import base64
import gzip
import http.client
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

from spoor_sdk.errors import BatchTooLarge, Rejected, RetryableError
from spoor_sdk.retry import parse_retry_after

RETRYABLE_STATUSES = {408, 429}  # and every 5xx


@dataclass
class Delivery:
    """The outcome of one accepted request: how many events the server took, and which it refused."""

    accepted: int
    rejected: list[dict] = field(default_factory=list)  # [{"index", "field", "reason"}], dead-lettered server-side


class HttpTransport:
    def __init__(self, host: str, write_key: str, timeout: float = 10.0, compress: bool = True,
                 user_agent: str = "spoor-sdk-python"):
        parts = urlsplit(host if "://" in host else "http://" + host)
        self.https = parts.scheme == "https"
        self.address = (parts.hostname, parts.port or (443 if self.https else 80))
        self.path = parts.path.rstrip("/") + "/v1/batch"
        self.timeout = timeout
        self.compress = compress
        self.headers = {"Content-Type": "application/json", "User-Agent": user_agent,
                        "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
        if compress:
            self.headers["Content-Encoding"] = "gzip"
        self.connection: http.client.HTTPConnection | None = None

    def send(self, messages: list[dict], encoded: list[bytes]) -> Delivery:
        sent_at = datetime.now(timezone.utc).isoformat()
        body = b'{"batch":[' + b",".join(encoded) + b'],"sentAt":' + json.dumps(sent_at).encode() + b"}"
        if self.compress:
            body = gzip.compress(body, compresslevel=5)
        status, headers, data = self._post(body)
        if status == 200:
            return Delivery(accepted=len(messages))
        if status == 413:
            raise BatchTooLarge(_error(data) or "batch too large")
        if status in RETRYABLE_STATUSES or status >= 500:
            raise RetryableError(f"HTTP {status}: {_error(data)}", parse_retry_after(headers.get("retry-after")))
        answer = _json(data)
        if status == 400 and isinstance(answer.get("rejected"), list):
            return Delivery(accepted=int(answer.get("accepted", 0)), rejected=answer["rejected"])
        raise Rejected(f"HTTP {status}: {_error(data)}", status)

    def _post(self, body: bytes) -> tuple[int, dict, bytes]:
        try:
            if self.connection is None:
                kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
                self.connection = kind(*self.address, timeout=self.timeout)
            self.connection.request("POST", self.path, body, self.headers)
            response = self.connection.getresponse()
            data = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
            if headers.get("connection", "").lower() == "close":
                self.close()
            return response.status, headers, data
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise RetryableError(f"network error: {err!r}") from err

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _json(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error(data: bytes) -> str:
    return str(_json(data).get("error") or data[:200].decode("utf-8", "replace"))
