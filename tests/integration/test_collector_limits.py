"""Per-key rate limits and batch-length limits on a real collector."""

import httpx
import pytest

pytestmark = pytest.mark.integration


def events(n: int, tag: str) -> dict:
    return {"batch": [{"type": "track", "userId": "u", "messageId": f"{tag}-{i}", "event": "X"} for i in range(n)]}


def test_rate_limit_answers_429_with_retry_after(start_process, test_settings, write_key, engine):
    from spoor.storage.write_keys import create_key
    other_key = create_key(engine, "other", "ios")
    start_process("collector", rate_limit_events_per_s=5, rate_limit_burst_events=10, max_batch_events=50)
    url = f"http://127.0.0.1:{test_settings.collector_port}"

    assert httpx.post(f"{url}/v1/batch", json=events(10, "a"), auth=(write_key, "")).status_code == 200
    limited = httpx.post(f"{url}/v1/batch", json=events(10, "b"), auth=(write_key, ""))
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # Another key has its own budget.
    assert httpx.post(f"{url}/v1/batch", json=events(10, "c"), auth=(other_key, "")).status_code == 200
    # More messages than a batch may hold.
    assert httpx.post(f"{url}/v1/batch", json=events(51, "d"), auth=(other_key, "")).status_code == 413
