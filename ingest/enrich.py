"""Enrichment at the edge: user agent -> browser / OS / device, anonymised client IP, bot flag.

Runs in the collector before an event is produced anywhere, so the raw IP never
reaches Kafka or PostgreSQL. The user agent is parsed by ``ua-parser`` (the
maintained uap-core rules, Rust matcher); parses are cached (LRU) because a
shop's traffic repeats a few thousand distinct user agents.
"""

import ipaddress
from functools import lru_cache
from typing import Any

import ua_parser

MAX_USER_AGENT_CHARS = 512  # bounds the matcher's work; longer agents are parsed on their prefix
MAX_NAME_CHARS = 128
USER_AGENT_CACHE_SIZE = 8192
IPV6_KEPT_BITS = ((1 << 48) - 1) << 80  # the first 48 bits


def anonymize_ip(value: Any) -> str | None:
    """IPv4 keeps its first 3 octets (a.b.c.0), IPv6 its first 48 bits (last 80 dropped); else None."""
    if not isinstance(value, str):
        return None
    return _anonymize_ip_text(value)


@lru_cache(maxsize=4096)  # a request's events share the peer's address
def _anonymize_ip_text(value: str) -> str | None:
    value = value.strip()
    octets = value.split(".")
    if len(octets) == 4 and all(o.isascii() and o.isdigit() and len(o) <= 3 and int(o) <= 255 for o in octets):
        return f"{int(octets[0])}.{int(octets[1])}.{int(octets[2])}.0"  # the common case, without ipaddress
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return anonymize_ip(str(ip.ipv4_mapped))
    if ip.version == 4:
        return None  # unreachable: every IPv4 address took the fast path
    return str(ipaddress.IPv6Address(int(ip) & IPV6_KEPT_BITS))


def _name(value: str | None) -> str | None:
    return value[:MAX_NAME_CHARS] if value and value != "Other" else None


def _version(*parts: str | None) -> str | None:
    numbers = [p for p in parts if p]
    return ".".join(numbers)[:32] if numbers else None


@lru_cache(maxsize=USER_AGENT_CACHE_SIZE)
def parse_user_agent(user_agent: str) -> dict[str, Any]:
    """Canonical-event fields for a user agent (call with at most MAX_USER_AGENT_CHARS characters)."""
    result = ua_parser.parse(user_agent)
    browser, os, device = result.user_agent, result.os, result.device
    return {
        "browser": _name(browser.family) if browser else None,
        "browser_version": _version(browser.major, browser.minor) if browser else None,
        "os": _name(os.family) if os else None,
        "os_version": _version(os.major, os.minor) if os else None,
        "device": _name(device.family) if device else None,
        # uap-core files every known crawler, monitor and preview bot under the device "Spider".
        "is_bot": device is not None and device.family == "Spider",
    }


def enrichment(context: Any, header_user_agent: str | None, peer_ip: str | None) -> dict[str, Any]:
    """Fields to add to one event. The message's own context (``userAgent``, ``ip``) wins over the request's."""
    context = context if isinstance(context, dict) else {}
    user_agent = context.get("userAgent")
    if not isinstance(user_agent, str) or not user_agent:
        user_agent = header_user_agent
    fields = parse_user_agent(user_agent[:MAX_USER_AGENT_CHARS]).copy() if user_agent else {}
    ip = anonymize_ip(context.get("ip")) or anonymize_ip(peer_ip)
    if ip:
        fields["anonymized_ip"] = ip
    return fields


def anonymize_payload_ip(message: Any) -> Any:
    """The message with ``context.ip`` anonymised, for dead letters (the raw IP is stored nowhere)."""
    if not isinstance(message, dict) or not isinstance(message.get("context"), dict) or "ip" not in message["context"]:
        return message
    context = dict(message["context"])
    context["ip"] = anonymize_ip(context["ip"])
    return {**message, "context": context}
