"""CORS on the real collector: preflight, per-key origins, 403s, and origin changes from the CLI."""

import json
import subprocess
import sys

import httpx
import pytest

from spoor.settings import environment
from spoor.storage.write_key_origins import set_origins
from spoor.storage.write_keys import create_key
from tests.support.local_stack import REPO, wait_until

pytestmark = pytest.mark.integration

SHOP = "https://shop.example"
OTHER_SHOP = "http://127.0.0.1:8081"
STRANGER = "https://evil.example"


@pytest.fixture(scope="module")
def keys(engine):
    browser = create_key(engine, "browser", "web")
    set_origins(engine, "browser", [SHOP, OTHER_SHOP + "/"])
    server = create_key(engine, "server", "backend")
    return {"browser": browser, "server": server}


@pytest.fixture(scope="module")
def url(start_process, test_settings, keys):
    start_process("collector", write_key_refresh_s=0.5)
    return f"http://127.0.0.1:{test_settings.collector_port}"


def preflight(url, origin, method="POST", headers="authorization, content-type"):
    return httpx.options(f"{url}/v1/batch", headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                     "Access-Control-Request-Headers": headers})


def batch(user="u1"):
    return {"batch": [{"type": "track", "event": "Product Viewed", "userId": user,
                       "properties": {"product_id": "P1"}}]}


def test_preflight_of_an_allowed_origin_needs_no_credentials(url):
    response = preflight(url, SHOP, headers="Authorization, Content-Type, Content-Encoding")
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == SHOP
    assert response.headers["access-control-allow-methods"] == "POST"
    assert {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")} == {
        "authorization", "content-type", "content-encoding", "x-retry-count"}
    assert response.headers["vary"] == "Origin"
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers
    assert preflight(url, OTHER_SHOP).headers["access-control-allow-origin"] == OTHER_SHOP


@pytest.mark.parametrize("origin, method, headers, reason", [
    (STRANGER, "POST", "authorization", "origin https://evil.example is not allowed"),
    (SHOP, "PUT", "authorization", "method PUT is not allowed"),
    (SHOP, "POST", "authorization, x-custom", "['x-custom'] are not allowed"),
])
def test_preflight_refuses_with_a_reason(url, origin, method, headers, reason):
    response = preflight(url, origin, method, headers)
    assert response.status_code == 403
    assert reason in response.json()["error"]
    assert "access-control-allow-origin" not in response.headers


def test_allowed_origin_with_its_key_is_accepted_and_may_read_the_answer(url, keys):
    response = httpx.post(f"{url}/v1/batch", json=batch(), auth=(keys["browser"], ""), headers={"Origin": SHOP})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == SHOP
    assert response.headers["access-control-expose-headers"] == "Retry-After"
    assert "access-control-allow-credentials" not in response.headers


def test_unload_request_with_the_key_in_a_text_plain_body_is_accepted(url, keys):
    body = json.dumps({**batch("u2"), "writeKey": keys["browser"]})
    response = httpx.post(f"{url}/v1/batch", content=body,
                          headers={"Origin": OTHER_SHOP, "Content-Type": "text/plain"})
    assert response.status_code == 200, response.text


def test_origin_not_allowed_for_this_key_is_403(url, keys):
    response = httpx.post(f"{url}/v1/batch", json=batch(), auth=(keys["server"], ""), headers={"Origin": SHOP})
    assert response.status_code == 403
    assert "origin https://shop.example is not allowed for this write key" in response.json()["error"]


def test_origin_no_key_allows_is_403_even_with_a_valid_key(url, keys):
    response = httpx.post(f"{url}/v1/batch", json=batch(), auth=(keys["browser"], ""), headers={"Origin": STRANGER})
    assert response.status_code == 403
    assert response.json()["error"] == "origin https://evil.example is not allowed"
    assert "access-control-allow-origin" not in response.headers


def test_requests_without_an_origin_are_not_affected(url, keys):
    response = httpx.post(f"{url}/v1/batch", json=batch(), auth=(keys["server"], ""))
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert httpx.post(f"{url}/v1/batch", json=batch(), auth=("wrong", ""), headers={"Origin": SHOP}).status_code == 401


def spoor(settings, *args):
    env = environment(settings)
    return subprocess.run([sys.executable, "-m", "spoor.cli", *args], cwd=REPO, env={**env, "PATH": ""},
                          capture_output=True, text=True, timeout=60)


def test_origins_set_from_the_cli_apply_without_a_restart(url, keys, test_settings):
    refused = spoor(test_settings, "keys", "origins", "server", "--origin", "https://shop.example/path")
    assert refused.returncode != 0 and "no path" in refused.stderr

    invalid = spoor(test_settings, "keys", "create", "--name", "pwa", "--source", "web", "--origin", "app.example")
    assert invalid.returncode != 0 and "http(s)://host[:port]" in invalid.stderr
    created = spoor(test_settings, "keys", "create", "--name", "pwa", "--source", "web",
                    "--origin", "HTTPS://App.Example:443")
    assert created.returncode == 0, created.stderr
    pwa_key = created.stdout.strip()
    assert "https://app.example" in spoor(test_settings, "keys", "origins", "pwa").stderr

    changed = spoor(test_settings, "keys", "origins", "server", "--origin", "*")
    assert changed.returncode == 0, changed.stderr

    def status(key, origin):
        return httpx.post(f"{url}/v1/batch", json=batch(), auth=(key, ""), headers={"Origin": origin}).status_code

    wait_until(lambda: status(pwa_key, "https://app.example") == 200, 10, "the new key's origin to be allowed")
    wait_until(lambda: status(keys["server"], STRANGER) == 200, 10, "the wildcard origin to apply")
    assert status(keys["browser"], STRANGER) == 403  # a wildcard on one key opens no other key
