"""The asyncio client: the same calls as `Client`, awaited."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls
from ._errors import EntitlementsError
from ._holds import HoldBase
from ._models import BatchResult, CustomerEntitlements, Decision, Entitlement, UsageEvent
from ._wire import Call, settings_from

T = TypeVar("T")


class AsyncClient:
    """`Client` for asyncio: the same arguments, calls and policies, each call awaited.
    Make one per event loop and reuse it (its connections belong to that loop); close it with
    `await client.aclose()` or `async with`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 2.0,
        fail_open: Iterable[str] = (),
        retries: int = 2,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
    ):
        self._policy, http = settings_from(
            base_url, api_key, timeout, fail_open, retries, backoff, max_backoff
        )
        self._http = httpx.AsyncClient(**http)

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(**call.request_args())
            except httpx.TransportError as error:
                step = call.after(self._policy, attempt, error=error)
            else:
                step = call.after(self._policy, attempt, response=response)
            if step.done:
                return step.value  # type: ignore[return-value]
            await asyncio.sleep(step.delay)
            attempt += 1

    async def check(self, customer: str, feature: str) -> Entitlement:
        """May `customer` (their external_id) use `feature` now, and how much is left."""
        return await self._send(_calls.check(customer, feature, self._policy))

    async def check_all(self, customer: str) -> CustomerEntitlements:
        """Every entitlement of `customer`, in one request."""
        return await self._send(_calls.check_all(customer, self._policy))

    async def consume(
        self,
        customer: str,
        feature: str,
        quantity: Decimal | int | str,
        *,
        event_id: str | None = None,
        timestamp: dt.datetime | str | None = None,
        properties: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> Decision:
        """The gate: check and record `quantity` atomically. Idempotent on `event_id` (one is
        generated when None, and reused by every retry): it counts once."""
        return await self._send(
            _calls.consume(
                customer,
                feature,
                quantity,
                event_id=event_id,
                timestamp=timestamp,
                properties=properties,
                dry_run=dry_run,
                policy=self._policy,
            )
        )

    async def report(self, events: Iterable[UsageEvent | Mapping[str, Any]]) -> BatchResult:
        """Report usage that already happened (recorded even past a hard limit), 1000 events
        a request. Raises EntitlementsUnavailable if the server cannot take them: report them
        again later with the same event ids (give your own) and each counts once."""
        return _calls.batches_merge([await self._send(c) for c in _calls.report(events)])

    async def reserve(
        self,
        customer: str,
        feature: str,
        quantity: Decimal | int | str,
        *,
        ttl_seconds: int = 300,
        reservation_id: str | None = None,
    ) -> AsyncReservation:
        """Hold `quantity` units until the work's cost is known; see `Reservation`."""
        call = _calls.reserve(
            customer,
            feature,
            quantity,
            ttl_seconds=ttl_seconds,
            reservation_id=reservation_id,
            policy=self._policy,
        )
        return AsyncReservation(self, await self._send(call))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncReservation(HoldBase):
    __doc__ = HoldBase.__doc__

    async def commit(self, quantity: Decimal | int | str | None = None) -> AsyncReservation:
        """Record `quantity` (default: all held) and free the rest. Idempotent."""
        self._state = await self._client._send(_calls.commit(self._state, quantity))
        return self

    async def release(self) -> AsyncReservation:
        """Free everything held. Idempotent."""
        call = _calls.release(self._state)
        if call is None:
            self._state = dataclasses.replace(self._state, status="released")
        else:
            self._state = await self._client._send(call)
        return self

    async def __aenter__(self) -> AsyncReservation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._open():
            try:
                await self.release()
            except EntitlementsError as error:
                if not self._exit_suppresses(error, exc_type is not None):
                    raise
