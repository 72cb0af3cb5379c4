"""Write keys as Segment's libraries send them, and the settings document's apiHost and protocol."""

import base64

import pytest

from spoor.ingest.auth import write_key_from
from spoor.ingest.segment_settings import api_host_and_protocol, settings_document


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


@pytest.mark.parametrize("authorization, body_key, expected", [
    (basic("k1"), None, "k1"),
    (basic("k1"), "body", "k1"),            # analytics-next sends both, the same key
    ("Bearer k2", None, "k2"),
    ("bearer   k2 ", "body", "k2"),
    (None, "k3", "k3"),                      # text/plain bodies of analytics-next
    ("Basic !!!", "k3", "k3"),               # a header without a usable key: the body's
    (basic(""), "k3", "k3"),
    ("Bearer ", None, None),
    ("Digest abc", None, None),
    (None, 42, None),
    (None, "", None),
])
def test_write_key_from_basic_bearer_or_body(authorization, body_key, expected):
    assert write_key_from(authorization, body_key) == expected


@pytest.mark.parametrize("public_url, host, scheme, expected", [
    ("", "collect.example.com", "https", ("collect.example.com/v1", "https")),
    ("", "127.0.0.1:8080", "http", ("127.0.0.1:8080/v1", "http")),
    ("", "[::1]:8080", "http", ("[::1]:8080/v1", "http")),
    ("", "evil.example/x?y", "http", ("10.0.0.5:8080/v1", "http")),  # not a host: the server's address
    ("", None, "http", ("10.0.0.5:8080/v1", "http")),
    ("https://collect.your.shop", "ignored:1", "http", ("collect.your.shop/v1", "https")),
    ("https://www.your.shop/spoor/", "ignored", "http", ("www.your.shop/spoor/v1", "https")),
    ("http://127.0.0.1:9000", None, "https", ("127.0.0.1:9000/v1", "http")),
])
def test_api_host_and_protocol(public_url, host, scheme, expected):
    assert api_host_and_protocol(public_url, host, scheme, fallback_host="10.0.0.5:8080") == expected


def test_a_public_url_without_a_scheme_is_refused():
    with pytest.raises(ValueError):
        api_host_and_protocol("collect.your.shop", None, "http", "x")


def test_settings_document_names_only_the_requested_key():
    doc = settings_document("wk-1", "collect.your.shop/v1", "https")
    assert doc["integrations"] == {"Segment.io": {
        "apiKey": "wk-1", "apiHost": "collect.your.shop/v1", "protocol": "https", "unbundledIntegrations": [],
        "addBundledMetadata": True, "maybeBundledConfigIds": {},
        "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]}}}
    assert doc["analyticsNextEnabled"] is True and doc["edgeFunction"] == {}
    assert doc["plan"]["track"]["__default"]["enabled"] is True
    assert doc["metrics"] == {"sampleRate": 0}  # no telemetry to Segment
