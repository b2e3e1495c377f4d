"""Gate a Django view on an entitlement, in one line:

    from entitlements_client.django import requires

    @requires("hd-video", customer=lambda request: request.user.account.external_id)
    def watch(request, video_id): ...

The view runs when the customer may use the feature (`request.entitlement` holds the answer);
otherwise the decorator answers 403 with the reason in the API's error JSON:
`{"error": {"code": "no_access" | "limit_exceeded" | "unavailable", "message", "details"}}`.
With `quantity`, each request consumes that much of a metered feature instead of checking.

The client comes from `client=` or from the setting `ENTITLEMENTS_CLIENT`, a dict of the
client's arguments: `{"base_url": ..., "api_key": ..., "fail_open": ["hd-video"]}`. Async
views are supported (the client is then an `AsyncClient`, one per event loop).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, JsonResponse

from ._async_client import AsyncClient
from ._client import Client
from ._errors import EntitlementsError
from ._models import Decision, Entitlement

SETTING = "ENTITLEMENTS_CLIENT"
_lock = threading.Lock()
_client: Client | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def default_client() -> Client:
    """The process's client, made once from settings.ENTITLEMENTS_CLIENT."""
    global _client
    with _lock:
        if _client is None:
            _client = Client(**getattr(settings, SETTING))
        return _client


def default_async_client() -> AsyncClient:
    """The running event loop's client, made once per loop from settings.ENTITLEMENTS_CLIENT."""
    loop = asyncio.get_running_loop()
    with _lock:
        if loop not in _async_clients:
            _async_clients[loop] = AsyncClient(**getattr(settings, SETTING))
        return _async_clients[loop]


def _forget_clients(*, setting: str, **kwargs: Any) -> None:
    global _client
    if setting == SETTING:
        with _lock:
            if _client is not None:
                _client.close()
            _client = None
            _async_clients.clear()


setting_changed.connect(_forget_clients)


def denied_response(feature: str, reason: str | None) -> HttpResponse:
    messages = {
        "no_access": f"Your plan does not include {feature}.",
        "limit_exceeded": f"You have used all of your {feature} allowance.",
        "unavailable": f"{feature} cannot be checked right now; try again shortly.",
    }
    return JsonResponse(
        {
            "error": {
                "code": reason,
                "message": messages.get(str(reason), f"{feature} is not available."),
                "details": {"feature": feature},
            }
        },
        status=403,
    )


def _respond(
    request: HttpRequest, feature: str, answer: Entitlement | Decision | None
) -> HttpResponse | None:
    """Sets `request.entitlement`; the 403 when the answer (None: nobody) denies."""
    if answer is None:
        answer = Entitlement(feature, None, False, reason="no_access")
    if isinstance(answer, Decision):
        allowed, reason, entitlement = answer.allowed, answer.reason, answer.entitlement
    else:
        allowed, reason, entitlement = answer.has_access, answer.reason, answer
    request.entitlement = entitlement  # type: ignore[attr-defined]
    return None if allowed else denied_response(feature, reason)


def _unknown_customer(error: EntitlementsError) -> Entitlement | None:
    """A customer the entitlements server does not know has no access (None: treated as
    nobody); any other error raises."""
    if error.code != "customer_not_found":
        raise error
    return None


def requires(
    feature: str,
    *,
    customer: Callable[[HttpRequest], str | None],
    client: Client | AsyncClient | None = None,
    quantity: Decimal | int | str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A view decorator: 403 with the deny reason unless `customer(request)` (the customer's
    external_id; None for nobody) may use `feature` now. With `quantity`, the request consumes
    it (counted once, whatever the retries) and is denied past a hard limit. A customer
    the server does not know is denied "no_access"; other API errors raise EntitlementsError
    (a misconfigured key should be seen, not hidden)."""

    def ask(gate: Any, external_id: str) -> Any:
        if quantity is None:
            return gate.check(external_id, feature)
        return gate.consume(external_id, feature, quantity)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_gate(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                external_id, answer = customer(request), None
                if external_id is not None:
                    try:
                        answer = await ask(client or default_async_client(), external_id)
                    except EntitlementsError as error:
                        answer = _unknown_customer(error)
                denied = _respond(request, feature, answer)
                return denied if denied is not None else await view(request, *args, **kwargs)

            return async_gate

        @functools.wraps(view)
        def gate(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            external_id, answer = customer(request), None
            if external_id is not None:
                try:
                    answer = ask(client or default_client(), external_id)
                except EntitlementsError as error:
                    answer = _unknown_customer(error)
            denied = _respond(request, feature, answer)
            return denied if denied is not None else view(request, *args, **kwargs)

        return gate

    return decorate
