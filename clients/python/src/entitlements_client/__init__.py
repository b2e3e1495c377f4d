"""The Python client of the entitlements platform.

    from entitlements_client import Client

    client = Client("http://127.0.0.1:8000", api_key, fail_open={"hd-video"})
    if client.consume("cust_42", "data-transfer", "2.5").allowed:
        ...

`Client` and `AsyncClient` answer `Entitlement`, `CustomerEntitlements`, `Decision`,
`BatchResult` and reservations; API errors (4xx) raise `EntitlementsError`. The Django view
decorator is in `entitlements_client.django`.
"""

from ._async_client import AsyncClient, AsyncReservation
from ._client import Client, Reservation
from ._errors import EntitlementsError, EntitlementsUnavailable
from ._models import (
    BatchResult,
    CustomerEntitlements,
    Decision,
    Entitlement,
    Rejection,
    UsageEvent,
)
from ._version import __version__

__all__ = [
    "AsyncClient",
    "AsyncReservation",
    "BatchResult",
    "Client",
    "CustomerEntitlements",
    "Decision",
    "Entitlement",
    "EntitlementsError",
    "EntitlementsUnavailable",
    "Rejection",
    "Reservation",
    "UsageEvent",
    "__version__",
]
