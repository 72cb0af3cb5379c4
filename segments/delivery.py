"""Sending one campaign message: a signed webhook or a Kafka record. No database access.

Webhook headers:
- ``Idempotency-Key``: the same for every attempt of one (campaign, user, episode);
- ``X-Spoor-Timestamp``: Unix seconds when signed;
- ``X-Spoor-Signature``: ``v1=`` + hex HMAC-SHA256(secret, "<timestamp>." + body). Receivers recompute it
  with the shared secret (``SPOOR_CAMPAIGN_WEBHOOK_SECRET``) and reject old timestamps.
"""

import hmac
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from segments import SegmentsError
from segments.campaign_spec import CampaignSpec
from spoor.settings import Settings
from spoor.signing import webhook_mac

MAX_RESPONSE_CHARS = 2000
RETRYABLE_STATUS = {408, 425, 429}


class DeliveryConfigError(SegmentsError):
    pass


@dataclass(frozen=True)
class Outcome:
    ok: bool
    permanent: bool = False  # a retry cannot help (4xx other than 408/425/429)
    status_code: int | None = None
    response: str | None = None
    error: str | None = None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return "v1=" + webhook_mac(secret.encode(), str(timestamp), body)


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


class Sender:
    def __init__(self, settings: Settings, producer=None):
        self.settings = settings
        self.producer = producer  # for Kafka actions (and dead letters); created by the caller

    def send(self, spec: CampaignSpec, body: bytes, key: str, user_key: str) -> Outcome:
        if spec.action.webhook:
            return self._webhook(spec.action.webhook, body, key)
        return self._kafka(spec.action.kafka_topic, body, key, user_key)

    def _webhook(self, url: str, body: bytes, key: str) -> Outcome:
        if not self.settings.campaign_webhook_secret:
            raise DeliveryConfigError("SPOOR_CAMPAIGN_WEBHOOK_SECRET is not set: webhooks are never sent unsigned")
        timestamp = int(time.time())
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "spoor-campaigns/1", "Idempotency-Key": key,
            "X-Spoor-Timestamp": str(timestamp),
            "X-Spoor-Signature": sign(self.settings.campaign_webhook_secret, timestamp, body)})
        try:
            with urllib.request.urlopen(request, timeout=self.settings.campaign_webhook_timeout_s) as response:
                return Outcome(True, status_code=response.status, response=_text(response.read()))
        except urllib.error.HTTPError as err:
            permanent = 400 <= err.code < 500 and err.code not in RETRYABLE_STATUS
            return Outcome(False, permanent, err.code, _text(err.read()), f"HTTP {err.code}")
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            return Outcome(False, error=f"{type(err).__name__}: {err}"[:MAX_RESPONSE_CHARS])

    def _kafka(self, topic: str, body: bytes, key: str, user_key: str) -> Outcome:
        if self.producer is None:
            raise DeliveryConfigError("a Kafka action needs a producer")
        from kafka.errors import KafkaError
        try:
            metadata = self.producer.send(topic, key=user_key.encode(), value=body,
                                          headers=[("idempotency-key", key.encode())]).get(timeout=30)
        except KafkaError as err:
            return Outcome(False, error=f"{type(err).__name__}: {err}"[:MAX_RESPONSE_CHARS])
        return Outcome(True, response=f"{metadata.topic}/{metadata.partition}/{metadata.offset}")


def _text(raw: bytes) -> str:
    return raw[:MAX_RESPONSE_CHARS].decode("utf-8", "replace")
