"""The admin API (a real `spoor segments api` process) checks the bearer token before it reads a byte of
the body, and reads at most SPOOR_ADMIN_MAX_BODY_BYTES of a body, chunked or not."""

import http.client
import select
import subprocess
import sys
import urllib.request

import pytest

from tests.support.local_stack import REPO, SpoorProcess, free_port, wait_until

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"
LIMIT = 64 * 1024
TOTAL = 64 * 1024 * 1024  # what a client offers to send; far more than the socket buffers (a few MB) hold
CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def api(test_settings, tmp_path_factory):
    settings = test_settings.model_copy(update={"admin_token": TOKEN, "admin_api_port": free_port(),
                                                "admin_max_body_bytes": LIMIT})
    log = tmp_path_factory.mktemp("logs") / "admin-api.log"
    env = SpoorProcess("segments", settings, log.parent).env()
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "spoor.cli", "segments", "api"], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)

    def healthy():
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.admin_api_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(healthy, 60, "the admin API")
    yield settings.admin_api_port
    process.terminate()
    process.wait(30)


def chunked(port: int, path: str, headers: dict, total: int = TOTAL, content: bytes | None = None):
    """PUT a chunked body (``content``, or ``total`` bytes of padding) with http.client, and stop sending as
    soon as the server has answered: (status, answer, bytes sent)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = 0

    def body():
        nonlocal sent
        if content is not None:
            for start in range(0, len(content), CHUNK):
                yield content[start:start + CHUNK]
                sent = min(len(content), start + CHUNK)
            return
        while sent < total:
            if select.select([connection.sock], [], [], 0)[0]:
                return  # the server answered without waiting for the rest
            yield b" " * CHUNK
            sent += CHUNK

    try:
        connection.request("PUT", path, body=body(), encode_chunked=True,
                           headers={"Content-Type": "application/json", **headers})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed the connection after its answer; the answer is still to read
    try:
        response = connection.getresponse()
        return response.status, response.read(), sent
    finally:
        connection.close()


def declared(port: int, length: int, headers: dict) -> int:
    """Send only the headers of a PUT declaring ``length`` bytes of body; the status answered to them."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("PUT", "/segments/declared")
        for name, value in {"Content-Type": "application/json", "Content-Length": str(length), **headers}.items():
            connection.putheader(name, value)
        connection.endheaders()
        return connection.getresponse().status  # times out if the server waits for the body
    finally:
        connection.close()


def test_the_token_is_checked_before_the_body_is_read(api):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, answer, sent = chunked(api, "/segments/anon", headers)
        assert status == 401 and b"bearer token" in answer, (headers, status, answer)
        assert sent < TOTAL // 4, sent  # the old API read all 64 MiB, then answered
    assert declared(api, 10 * 1024 * 1024, {}) == 401  # not 413: nothing is said to a caller without the token


def test_a_chunked_body_is_read_up_to_the_limit_only(api):
    status, answer, sent = chunked(api, "/segments/big", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 413 and f"body over {LIMIT} bytes".encode() in answer, (status, answer)
    assert sent < TOTAL // 4, sent


def test_a_declared_length_over_the_limit_is_refused_before_the_body(api):
    assert declared(api, 4 * LIMIT, {"Authorization": f"Bearer {TOKEN}"}) == 413


def test_a_chunked_body_within_the_limit_reaches_the_route(api):
    definition = b'{"where": "orders >= 2"' + b" " * 40_000 + b"}"  # several chunks, under the limit
    status, answer, sent = chunked(api, "/segments/chunked", {"Authorization": f"Bearer {TOKEN}"},
                                   content=definition)
    assert status == 200 and sent == len(definition), answer
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{api}/segments/chunked", headers={
            "Authorization": f"Bearer {TOKEN}"}), timeout=10) as response:
        assert response.status == 200
