"""The Python SDK's Kafka transport names kinds as the collector does: its copy of TRACK_KINDS (the SDK
installs without Spoor) equals spoor/events.py's. The copy had drifted: it lacked Order Refunded."""

from spoor.events import TRACK_KINDS
from spoor_sdk.kafka import TRACK_KINDS as SDK_TRACK_KINDS


def test_the_sdk_maps_every_ecommerce_event_as_the_collector_does():
    assert SDK_TRACK_KINDS == {name: kind.value for name, kind in TRACK_KINDS.items()}
