"""The errors the client raises."""

from __future__ import annotations

from typing import Any


class EntitlementsError(Exception):
    """An error answer of the entitlements API: `status` (e.g. 400, 404, 409), the server's
    `code` (e.g. "invalid", "customer_not_found", "idempotency_conflict"), its `message` and
    `details` (e.g. the field at fault). Never retried: the same request would fail again."""

    def __init__(
        self, status: int | None, code: str, message: str, details: dict[str, Any] | None = None
    ):
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}


class EntitlementsUnavailable(EntitlementsError):
    """The server could not be reached, timed out or answered 5xx, after the retries.

    `check`, `check_all`, `consume` and `reserve` never raise it: they answer by the fail
    policy instead (reason "unavailable"). `report`, a hold's `commit` and `release` raise it:
    they are idempotent, so calling them again later is safe. `status` is the last 5xx status,
    or None when no answer came at all."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(status, "unavailable", message)
