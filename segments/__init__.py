"""Segments on the behaviour data in PostgreSQL.

Pure parts (no database or Kafka import): ``segment_language`` (the segment language) and
``segment_fields`` (the field catalogue). SQL is built by ``segment_compiler`` (SQLAlchemy Core,
parameterised) and run by ``membership``; ``segment_runner`` is the ``spoor segments run`` process.
"""

from spoor.errors import SpoorError


class SegmentsError(SpoorError):
    """Root of every error this package raises on purpose (bad definitions, unknown names...)."""
