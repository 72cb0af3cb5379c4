"""Privacy: a user's consent, and erasure that reaches every copy of their data."""

from spoor.errors import SpoorError


class PrivacyError(SpoorError):
    """Root of every error this package raises on purpose."""
