"""The admin HTTP API gets hostile input on every operation its OpenAPI document lists: odd path
parameters (NUL, 10,000 characters, `..`), bodies of the wrong shape, deep nesting, NUL, huge
numbers and strings. A hostile request is the client's fault: it gets a 4xx with a reason, never a
5xx, and the API keeps answering (on the real PostgreSQL, in-process ASGI client)."""

import json
import re
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from spoor.cli.admin_api import create_api

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)

PATH_VALUES = ["x" * 10_000, "%00", "..%2F..%2Fetc", "%F0%9F%92%A9", "-1", "9" * 40, "%E2%80%AE", "a b"]


def deep(levels: int):
    value: dict = {}
    for _ in range(levels):
        value = {"all": [value]}
    return value


BODIES = [b"", b"null", b"[]", b"42", b'"text"', b"{", b"\xff\xfe", json.dumps(deep(200)).encode(),
          json.dumps({"name": "\u0000", "definition": {"field": "orders", "op": ">", "value": 1}}).encode(),
          json.dumps({"definition": {"field": "orders", "op": ">", "value": 1e308}}).encode(),
          b'{"definition": {"field": "orders", "op": ">", "value": 1e400}}',
          json.dumps({"definition": "x" * 300_000}).encode(),
          json.dumps({"definition": {"any": [{"field": "f" * 5000, "op": "==", "value": "v"}] * 50}}).encode(),
          json.dumps({"spec": {"audience": None, "action": {"webhook": "http://[::1]:1/x"}}}).encode(),
          json.dumps({"consent": {"marketing": "yes"}, "time_zone": "Mars/Olympus"}).encode()]


@pytest.fixture(scope="module")
def client(test_settings, engine):
    settings = test_settings.model_copy(update={"admin_token": TOKEN, "campaign_webhook_secret": "s"})
    with TestClient(create_api(settings, engine, clock=lambda: NOW), raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def operations(client) -> list[tuple[str, str]]:
    paths = client.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


def test_every_operation_answers_hostile_input_without_a_server_error(client):
    ops = operations(client)
    assert len(ops) >= 10
    server_errors = []
    for method, template in ops:
        params = re.findall(r"{(\w+)}", template)
        for value in PATH_VALUES if params else [None]:
            path = re.sub(r"{\w+}", value, template) if params else template
            for body in BODIES if method in ("POST", "PUT", "PATCH") else [None]:
                response = client.request(method, path, content=body,
                                          headers={"Content-Type": "application/json"})
                if response.status_code >= 500:
                    server_errors.append((method, path[:80], (body or b"")[:60], response.status_code))
    assert server_errors == []
    assert client.get("/segments").status_code == 200  # still answering
