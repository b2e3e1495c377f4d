"""The small set of domain exceptions that services raise. The API maps them to the error JSON
of DESIGN.md (`{"error": {"code", "message", "details"}}`); pages show them as form errors."""

from typing import Any


class DomainError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details: dict[str, Any] = details or {}


class InvalidInput(DomainError):
    status = 400
    code = "invalid"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class PaymentFailed(DomainError):
    status = 402
    code = "payment_failed"


class RateLimited(DomainError):
    """The API key is over its rate: answered 429 with Retry-After."""

    status = 429
    code = "throttled"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
