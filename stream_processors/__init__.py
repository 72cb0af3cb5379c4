"""Stage 2: Faust stream processors. Canonical events in, per-user state out.

Every reach into faust-streaming's or aiokafka's private parts is in ``faust_internals``."""

from spoor.errors import SpoorError


class WorkerError(SpoorError):
    """Root of every error this package raises on purpose (so far: a run of records that all failed)."""
