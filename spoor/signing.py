"""The HMAC every outgoing Spoor webhook (campaigns, alerts) is signed with."""

import hashlib
import hmac


def webhook_mac(secret: bytes, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"``; the timestamp lets receivers refuse replays."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
