"""Spoor's server-side tracking SDK.

    import spoor_sdk
    spoor_sdk.init("WRITE_KEY", host="https://collector.example.com")
    spoor_sdk.track("user-1", "Signed Up", {"plan": "pro"})
    spoor_sdk.order_completed("user-1", order_id="o-1", revenue="42.50", currency="EUR")
    spoor_sdk.track("user-2", "Product Viewed", {"product_id": "P1"},
                    consent={"analytics": True, "marketing": False, "personalisation": True})
    spoor_sdk.shutdown()   # also runs at interpreter exit

Or hold a ``Client`` of your own (several write keys, the Kafka transport, callbacks).
"""

from spoor_sdk.client import Client, Stats
from spoor_sdk.errors import BatchTooLarge, Rejected, RetryableError, SpoorError
from spoor_sdk.http import Delivery, HttpTransport
from spoor_sdk.retry import RetryPolicy
from spoor_sdk.version import VERSION

__version__ = VERSION
__all__ = ["Client", "Stats", "HttpTransport", "KafkaTransport", "RetryPolicy", "Delivery", "SpoorError",
           "RetryableError", "BatchTooLarge", "Rejected", "init", "track", "page", "screen", "identify",
           "product_viewed", "product_added", "product_removed", "checkout_started", "order_completed",
           "consent", "consent_preferences", "flush", "shutdown"]

default_client: Client | None = None


def __getattr__(name: str):
    if name == "KafkaTransport":  # imported lazily: kafka-python is an optional dependency
        from spoor_sdk.kafka import KafkaTransport
        return KafkaTransport
    raise AttributeError(name)


def init(write_key: str | None = None, host: str = "http://127.0.0.1:8080", **options) -> Client:
    """Create the module's default client (replacing, after a flush, any earlier one)."""
    global default_client
    if default_client is not None:
        default_client.shutdown()
    default_client = Client(write_key, host, **options)
    return default_client


def _client() -> Client:
    if default_client is None:
        raise RuntimeError("call spoor_sdk.init(write_key, host=...) first")
    return default_client


def track(*args, **kwargs) -> bool:
    return _client().track(*args, **kwargs)


def page(*args, **kwargs) -> bool:
    return _client().page(*args, **kwargs)


def screen(*args, **kwargs) -> bool:
    return _client().screen(*args, **kwargs)


def identify(*args, **kwargs) -> bool:
    return _client().identify(*args, **kwargs)


def product_viewed(*args, **kwargs) -> bool:
    return _client().product_viewed(*args, **kwargs)


def product_added(*args, **kwargs) -> bool:
    return _client().product_added(*args, **kwargs)


def product_removed(*args, **kwargs) -> bool:
    return _client().product_removed(*args, **kwargs)


def checkout_started(*args, **kwargs) -> bool:
    return _client().checkout_started(*args, **kwargs)


def order_completed(*args, **kwargs) -> bool:
    return _client().order_completed(*args, **kwargs)


def consent(preferences: dict[str, bool] | None) -> None:
    _client().consent(preferences)


def consent_preferences() -> dict[str, bool] | None:
    return _client().consent_preferences()


def flush(timeout: float | None = None) -> bool:
    return _client().flush(timeout)


def shutdown(timeout: float = 10.0) -> bool:
    return _client().shutdown(timeout)
