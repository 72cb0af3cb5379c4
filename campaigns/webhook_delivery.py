"""Sending one campaign message: a signed webhook or a Kafka record. No database access.

Webhook headers:
- ``Idempotency-Key``: the same for every attempt of one (campaign, user, episode);
- ``X-Spoor-Timestamp``: Unix seconds when signed;
- ``X-Spoor-Signature``: ``v1=`` + hex HMAC-SHA256(secret, "<timestamp>." + body). Receivers recompute it
  with the shared secret (``SPOOR_CAMPAIGN_WEBHOOK_SECRET``) and reject old timestamps (``verify``).

Sends follow ``spoor.webhooks``: no redirects (a 3xx is given up: the URL is wrong, and following it would
turn the POST into a GET and hand the signature to another host), no internal addresses unless
``SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` (checked when a campaign is defined or launched, and at every
send), at most 64 KiB of a response read.
"""

import hmac
import http.client
import time
from dataclasses import dataclass

from spoor import webhooks
from spoor.campaigns import CampaignsError
from spoor.campaigns.campaign_spec import CampaignSpec
from spoor.settings import Settings
from spoor.signing import webhook_mac

MAX_RESPONSE_CHARS = 2000  # of a response, stored with the attempt
RETRYABLE_STATUS = {408, 425, 429}
SIGNATURE_TOLERANCE_S = 300.0


class DeliveryConfigError(CampaignsError):
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


def verify(secret: str, timestamp: str, body: bytes, signature: str,
           tolerance_s: float = SIGNATURE_TOLERANCE_S, now: float | None = None) -> bool:
    """What a receiver does: the signature matches (constant-time compare) and the timestamp is within
    ``tolerance_s`` of ``now`` (default: the clock), before or after, so a captured call cannot be
    replayed later."""
    try:
        signed_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    fresh = abs((time.time() if now is None else now) - signed_at) <= tolerance_s
    return hmac.compare_digest(sign(secret, signed_at, body), signature) and fresh


def check_webhook(spec: CampaignSpec, settings: Settings) -> None:
    """When a campaign is defined or launched: its webhook URL may be sent to (``spoor.webhooks``)."""
    if spec.action.webhook:
        try:
            webhooks.check_url(spec.action.webhook, settings.webhook_allow_private_addresses)
        except webhooks.RefusedAddress as err:
            raise DeliveryConfigError(f"action.webhook: {err}") from None


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
        headers = {"Content-Type": "application/json", "User-Agent": "spoor-campaigns/1", "Idempotency-Key": key,
                   "X-Spoor-Timestamp": str(timestamp),
                   "X-Spoor-Signature": sign(self.settings.campaign_webhook_secret, timestamp, body)}
        try:
            status, location, raw = webhooks.post(url, body, headers, self.settings.campaign_webhook_timeout_s,
                                                  self.settings.webhook_allow_private_addresses)
        except webhooks.RefusedAddress as err:  # DNS may have changed since the campaign was defined
            return Outcome(False, permanent=True, error=str(err)[:MAX_RESPONSE_CHARS])
        except (OSError, http.client.HTTPException) as err:
            return Outcome(False, error=f"{type(err).__name__}: {err}"[:MAX_RESPONSE_CHARS])
        if 200 <= status < 300:
            return Outcome(True, status_code=status, response=_text(raw))
        if 300 <= status < 400:
            return Outcome(False, True, status, _text(raw) or None,  # the reason is what the row keeps
                           f"HTTP {status}: redirect to {(location or '')[:200]!r} not followed (webhooks never "
                           "follow redirects: set the campaign's URL to the final one)")
        permanent = 400 <= status < 500 and status not in RETRYABLE_STATUS
        return Outcome(False, permanent, status, _text(raw), f"HTTP {status}")

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
