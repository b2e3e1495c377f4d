"""What `Reservation` and `AsyncReservation` share: a hold's state and its attributes."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from ._errors import EntitlementsError, EntitlementsUnavailable
from ._models import UNAVAILABLE, Entitlement, HoldState

HELD = "held"


class HoldBase:
    """A reservation: `quantity` units of `feature` held for `customer` until `expires_at`.

    `allowed` says whether anything is held (when not, `reason` says why: "limit_exceeded",
    "no_access", or "unavailable" with the fail policy's answer). `commit(quantity=None)`
    records the usage (at most the held quantity; default all) and frees the rest;
    `release()` frees it all. Used as a context manager, leaving the block without a commit
    releases it, also when the block raises."""

    def __init__(self, client: Any, state: HoldState):
        self._client = client
        self._state = state

    id = property(lambda self: self._state.id, doc="The reservation_id (idempotency key).")
    customer = property(lambda self: self._state.customer)
    feature = property(lambda self: self._state.feature)
    allowed: bool = property(lambda self: self._state.allowed)  # type: ignore[assignment]
    reason: str | None = property(lambda self: self._state.reason)  # type: ignore[assignment]
    status: str | None = property(lambda self: self._state.status)  # type: ignore[assignment]
    quantity: Decimal = property(lambda self: self._state.quantity)  # type: ignore[assignment]
    expires_at: dt.datetime | None = property(lambda self: self._state.expires_at)  # type: ignore[assignment]
    entitlement: Entitlement | None = property(lambda self: self._state.entitlement)  # type: ignore[assignment]

    @property
    def unavailable(self) -> bool:
        return self._state.reason == UNAVAILABLE

    def _open(self) -> bool:
        """Still to be committed or released when the block ends."""
        return self._state.allowed and self._state.status in (HELD, UNAVAILABLE)

    @staticmethod
    def _exit_suppresses(error: EntitlementsError, block_raised: bool) -> bool:
        """A release at the end of the block does not hide the block's own exception, nor
        fail the block for a hold that ends by itself: unreachable server, expired or gone."""
        return (
            block_raised or isinstance(error, EntitlementsUnavailable) or error.status in (404, 409)
        )

    def __repr__(self) -> str:
        s = self._state
        return (
            f"<{type(self).__name__} {s.id} {s.customer}/{s.feature} {s.quantity} "
            f"status={s.status} allowed={s.allowed} reason={s.reason}>"
        )
