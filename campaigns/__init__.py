"""Campaigns: messages sent when users enter a segment or fire a behavioural trigger.

Pure parts (no database or Kafka import): ``campaign_spec`` (the definition), ``campaign_rules``
(holdout, quiet hours, caps, retries) and ``lift``. ``trigger_intake`` stores triggers read from Kafka,
``campaign_dispatch`` enqueues and sends deliveries through ``webhook_delivery``, and
``campaign_runner`` is the ``spoor campaigns run`` process.
"""

from spoor.errors import SpoorError


class CampaignsError(SpoorError):
    """Root of every error this package raises on purpose (bad definitions, unknown campaigns...)."""
