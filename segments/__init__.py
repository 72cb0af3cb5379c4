"""Segments and campaigns on the behaviour data in PostgreSQL.

Pure parts (no database or Kafka import): ``language`` (the segment language), ``fields`` (the field
catalogue), ``rules`` (campaign rules), ``stats`` (lift). SQL is built by ``compiler`` (SQLAlchemy
Core, parameterised) and run by ``membership`` and ``campaigns``.
"""


class SegmentsError(Exception):
    """Root of every error this package raises on purpose (bad definitions, unknown names...)."""
