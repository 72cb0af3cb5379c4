"""Stage 1: the HTTP collector. Segment-spec messages in, canonical events to Kafka."""

from spoor.errors import SpoorError


class IngestError(SpoorError):
    """Root of every error this package raises on purpose (an invalid message, Kafka not acknowledging,
    a request refused)."""
