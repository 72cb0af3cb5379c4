"""What a transport raises; the sender thread decides from the type whether to retry."""


class SpoorError(Exception):
    """Root of the SDK's exceptions."""


class RetryableError(SpoorError):
    """Network error, 429 or 5xx: try again later (after ``retry_after`` seconds if the server said so)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class BatchTooLarge(SpoorError):
    """413: the batch must be split."""


class Rejected(SpoorError):
    """A permanent refusal (401, 400 not JSON, ...): retrying the same batch cannot succeed."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
