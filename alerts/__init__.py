"""Metric anomaly alerts: detectors, rules, the alert lifecycle and notifiers."""


from spoor.errors import SpoorError


class AlertsError(SpoorError):
    """Root of every error raised by the alerts package."""
