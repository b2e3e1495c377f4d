"""What the client answers: plain, immutable values with decimals as `Decimal` and times as
aware `datetime` (UTC)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Entitlement:
    """`E` of the API: may the customer use the feature now, and how much is left.

    `reason` says why not: None when `has_access`; "no_access" (not in the plan, no
    subscription, gate off) or "limit_exceeded" (a hard limit used up); "unavailable" when the
    server could not answer and the fail policy decided `has_access`."""

    feature: str
    kind: str | None
    has_access: bool
    value: Any = None
    unlimited: bool = False
    limit: Decimal | None = None
    granted: Decimal | None = None
    usage: Decimal | None = None
    balance: Decimal | None = None
    overage: Decimal | None = None
    enforcement: str | None = None
    source: str | None = None
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None
    resets_at: dt.datetime | None = None
    reserved: Decimal | None = None
    reason: str | None = None

    @property
    def unavailable(self) -> bool:
        """True when this was decided by the fail policy, not by the server."""
        return self.reason == UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of `consume`: `allowed`, `reason` (None, "limit_exceeded", "no_access" or
    "unavailable"), the entitlement after it, and the `event_id` it was recorded under (keep it
    to find or reverse the usage later)."""

    allowed: bool
    reason: str | None
    entitlement: Entitlement
    event_id: str


@dataclass(frozen=True, slots=True)
class CustomerEntitlements:
    """The answer of `check_all`. Look a feature up with `get(feature)` (or `[feature]`): a
    feature the customer has no entitlement to answers `has_access=False`, reason "no_access";
    while the server is unavailable every feature answers by the fail policy."""

    customer: str
    plan: str | None
    entitlements: tuple[Entitlement, ...]
    reason: str | None = None
    fail_open: frozenset[str] = field(default_factory=frozenset, repr=False)

    @property
    def unavailable(self) -> bool:
        return self.reason == UNAVAILABLE

    def get(self, feature: str) -> Entitlement:
        for entitlement in self.entitlements:
            if entitlement.feature == feature:
                return entitlement
        if self.unavailable:
            return fallback_entitlement(feature, self.fail_open)
        return Entitlement(feature=feature, kind=None, has_access=False, reason="no_access")

    __getitem__ = get

    def __iter__(self) -> Iterator[Entitlement]:
        return iter(self.entitlements)

    def __len__(self) -> int:
        return len(self.entitlements)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One usage event for `report`. `event_id` is generated when None (and kept on retry);
    `timestamp` (aware) defaults to the server's now."""

    customer: str
    feature: str
    quantity: Decimal | int | str
    event_id: str | None = None
    timestamp: dt.datetime | str | None = None
    properties: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event of a batch that the server refused (the others are recorded)."""

    index: int
    event_id: str
    code: str
    message: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The answer of `report`: events `accepted` now, `duplicates` (an event_id seen before:
    counted once), the `rejected` ones, and the event ids of all events in order."""

    accepted: int
    duplicates: int
    rejected: tuple[Rejection, ...]
    event_ids: tuple[str, ...]


# --- from the API's JSON --------------------------------------------------------------------


def decimal_or_none(text: Any) -> Decimal | None:
    return None if text is None else Decimal(str(text))


def time_or_none(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def denial_reason(data: Mapping[str, Any]) -> str | None:
    """Why an entitlement gives no access, as a consume would say it: a metered feature that
    has a source (plan, override, grant) is used up, anything else is not granted."""
    if data.get("reason") is not None:  # the server's own word, when it gives one
        return str(data["reason"])
    if data["has_access"]:
        return None
    if data.get("kind") == "metered" and data.get("source") is not None:
        return "limit_exceeded"
    return "no_access"


def entitlement_from_json(data: Mapping[str, Any]) -> Entitlement:
    return Entitlement(
        feature=data["feature"],
        kind=data.get("kind"),
        has_access=bool(data["has_access"]),
        value=data.get("value"),
        unlimited=bool(data.get("unlimited", False)),
        limit=decimal_or_none(data.get("limit")),
        granted=decimal_or_none(data.get("granted")),
        usage=decimal_or_none(data.get("usage")),
        balance=decimal_or_none(data.get("balance")),
        overage=decimal_or_none(data.get("overage")),
        enforcement=data.get("enforcement"),
        source=data.get("source"),
        period_start=time_or_none(data.get("period_start")),
        period_end=time_or_none(data.get("period_end")),
        resets_at=time_or_none(data.get("resets_at")),
        reserved=decimal_or_none(data.get("reserved")),
        reason=denial_reason(data),
    )


def fallback_entitlement(feature: str, fail_open: frozenset[str]) -> Entitlement:
    """The fail policy: the server could not answer, so a feature listed in `fail_open` is
    allowed and any other is denied, both with reason "unavailable"."""
    return Entitlement(
        feature=feature, kind=None, has_access=feature in fail_open, reason=UNAVAILABLE
    )


@dataclass(frozen=True, slots=True)
class HoldState:
    """A reservation as the server last described it (or as the fail policy decided it:
    `status` "unavailable", nothing held on the server)."""

    id: str
    customer: str
    feature: str
    quantity: Decimal
    allowed: bool
    reason: str | None
    status: str | None
    expires_at: dt.datetime | None = None
    entitlement: Entitlement | None = None
