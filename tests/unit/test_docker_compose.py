"""docker-compose.yml publishes no port on all interfaces (Kafka without authentication, PostgreSQL
spoor/spoor, anonymous Grafana...): every published port is bound to the host's loopback."""

import ipaddress
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def host_ip(port) -> str | None:
    """The host address a compose port entry publishes on; None for all interfaces. Short syntax
    ("[IP:]HOST:CONTAINER[/proto]", "CONTAINER", an int) or long syntax ({host_ip, published, target})."""
    if isinstance(port, dict):
        return port.get("host_ip") or None
    text = str(port).split("/", 1)[0]
    if text.startswith("["):  # "[::1]:80:80"
        return text[1:text.index("]")]
    parts = text.split(":")
    return parts[0] if len(parts) == 3 and parts[0] else None


def is_loopback(address: str | None) -> bool:
    return address is not None and ipaddress.ip_address(address).is_loopback


def published(compose: dict) -> list[tuple[str, object]]:
    return [(name, port) for name, service in compose["services"].items() for port in service.get("ports", [])]


def test_the_parser_sees_all_interfaces():
    assert [is_loopback(host_ip(p)) for p in ("9092:9092", 9092, "8080", "0.0.0.0:80:80", ":80:80",
                                               {"target": 80, "published": 80}, "[::]:80:80")] == [False] * 7
    assert [is_loopback(host_ip(p)) for p in ("127.0.0.1:9092:9092", "127.0.0.1:53:53/udp", "[::1]:80:80",
                                               {"host_ip": "127.0.0.1", "target": 80, "published": 80})] == [True] * 4


def test_no_port_is_published_on_all_interfaces():
    compose = yaml.safe_load(COMPOSE.read_text())
    ports = published(compose)
    assert ports, "docker-compose.yml publishes no port at all: is this the right file?"
    exposed = [(name, port) for name, port in ports if not is_loopback(host_ip(port))]
    assert exposed == [], f"published beyond the host's loopback (bind to 127.0.0.1:HOST:CONTAINER): {exposed}"
    assert not [name for name, service in compose["services"].items() if service.get("network_mode") == "host"]
