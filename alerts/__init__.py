"""Metric anomaly alerts: detectors, rules, the alert lifecycle and notifiers."""


class AlertsError(Exception):
    """Root of every error raised by the alerts package."""
