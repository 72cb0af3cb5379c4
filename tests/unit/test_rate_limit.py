import base64

from spoor.ingest.auth import RateLimiter, write_key_from


def test_token_bucket_allows_burst_then_asks_to_wait():
    limiter = RateLimiter(events_per_s=100, burst=200)
    assert limiter.retry_after("k", 150, now=0.0) == 0
    assert limiter.retry_after("k", 100, now=0.0) == 0.5  # 50 tokens left, 50 more take 0.5 s
    assert limiter.retry_after("k", 100, now=0.5) == 0
    assert limiter.retry_after("other", 200, now=0.5) == 0  # buckets are per key


def test_write_key_from_basic_auth_or_body():
    header = "Basic " + base64.b64encode(b"secret:").decode()
    assert write_key_from(header, None) == "secret"
    assert write_key_from(None, "body-key") == "body-key"
    assert write_key_from("Basic !!!", None) is None
    assert write_key_from(None, None) is None
