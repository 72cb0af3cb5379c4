"""The rules every outgoing webhook (campaigns, alert notifiers) follows.

- The receiver's host must resolve to public addresses only: a URL whose host is, or resolves to, a
  loopback, private, link-local, multicast, reserved, unspecified or otherwise non-global address
  (IPv4 or IPv6, also IPv4 inside IPv6: mapped, 6to4, Teredo, NAT64) is refused, unless
  ``SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` is set (a test, an on-premises receiver). Every address
  the name resolves to is checked, at definition time where possible and again at each send (DNS
  can change), and the send connects to an address that was checked.
- Redirects are never followed: a 3xx is a failed delivery, given up (the URL is wrong; following it
  would turn the POST into a GET and hand the signature to another host).
- At most ``MAX_RESPONSE_BYTES`` of a response are read.
"""

import http.client
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from spoor.errors import SpoorError

MAX_RESPONSE_BYTES = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RefusedAddress(SpoorError, OSError):  # an OSError too: the notifiers catch it with aiohttp's resolver errors
    """The webhook's host is, or resolves to, an address webhooks may not go to (or it is no URL)."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]  # the client's address
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(address: str) -> str | None:
    """Why webhooks may not go to the IP address ``address``, or None if they may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id (fe80::1%eth0)
    except ValueError:
        return f"{address!r} is not an IP address"
    candidates = [ip]
    if ip.version == 6 and (inner := _embedded_ipv4(ip)) is not None:
        # An IPv4-mapped or NAT64 address is the IPv4 one (both prefixes count as reserved in IPv6);
        # for 6to4 and Teredo both the IPv6 address and the one inside must pass.
        candidates = [inner] if ip.ipv4_mapped or ip in _NAT64 else [ip, inner]
    for candidate in candidates:
        for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
            if getattr(candidate, f"is_{kind}"):
                article = "an" if kind[0] in "aeiou" else "a"
                return f"{address} is {article} {kind.replace('_', '-')} address"
        if not candidate.is_global:
            return f"{address} is not a public address"
    return None


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Raise ``RefusedAddress`` if any of the addresses ``host`` resolved to is refused."""
    addresses = list(addresses)
    if not addresses:
        raise RefusedAddress(f"webhook host {host!r} resolved to no address")
    for address in addresses:
        reason = refusal(address)
        if reason is not None:
            raise RefusedAddress(f"webhook host {host!r} refused: {reason} (loopback, private, link-local and "
                                 "other internal addresses need SPOOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=true)")


def _parts(url: str):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedAddress(f"webhook URL {url[:200]!r} is not an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedAddress(f"webhook URL {url[:200]!r} has an invalid port") from None
    return parts, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return False


def check_literal(url: str, allow_private: bool) -> None:
    """The URL is http(s) with a host, and a host that is an IP address is allowed. No DNS lookup."""
    parts, _port = _parts(url)
    if not allow_private and _is_ip(parts.hostname):
        check_addresses(parts.hostname, [parts.hostname])


def check_url(url: str, allow_private: bool) -> None:
    """At definition time: ``check_literal``, and every address the host resolves to now is allowed. A
    name that does not resolve (yet) passes: the send checks again, as it does in any case."""
    check_literal(url, allow_private)
    parts, port = _parts(url)
    if allow_private or _is_ip(parts.hostname):
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return
    check_addresses(parts.hostname, [info[4][0] for info in infos])


def resolve(host: str, port: int, allow_private: bool) -> list[tuple]:
    """``getaddrinfo`` of ``host``, every address checked (all of them, not only the one used)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not allow_private:
        check_addresses(host, [info[4][0] for info in infos])
    return infos


def _connect(infos: list[tuple], timeout: float) -> socket.socket:
    """A connection to the first of the checked addresses that answers."""
    last: OSError | None = None
    for family, socktype, proto, _name, address in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as err:
            sock.close()
            last = err
    raise last or OSError("no address to connect to")


def post(url: str, body: bytes, headers: dict, timeout_s: float, allow_private: bool,
         max_response_bytes: int = MAX_RESPONSE_BYTES) -> tuple[int, str | None, bytes]:
    """POST ``body`` to ``url`` under the rules above: (status, Location header, the first
    ``max_response_bytes`` of the response body). Redirects are returned, not followed. Raises
    ``RefusedAddress`` for a refused host, ``OSError`` or ``http.client.HTTPException`` otherwise."""
    parts, port = _parts(url)
    infos = resolve(parts.hostname, port, allow_private)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    # The Host header and, for https, the certificate check and SNI use the name; the socket goes to
    # an address checked above (not a second lookup, which DNS could answer differently).
    connection = connection_class(parts.hostname, port, timeout=timeout_s)
    connection._create_connection = lambda *_args, **_kwargs: _connect(infos, timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Location"), response.read(max_response_bytes)
    finally:
        connection.close()  # the rest of a longer response is never read
