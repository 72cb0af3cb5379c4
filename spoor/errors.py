"""The root of every error Spoor raises on purpose. Each package has one root below it (``IngestError``,
``SegmentsError``, ``CampaignsError``, ``PrivacyError``, ``AlertsError``...), so a caller can catch a
whole stage's refusals, or all of Spoor's, without catching a library's or a bug's."""


class SpoorError(Exception):
    """Root of every error Spoor raises on purpose."""
