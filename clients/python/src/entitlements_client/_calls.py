"""The API calls of the client, built without I/O (see `_wire.Call`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from ._models import (
    UNAVAILABLE,
    BatchResult,
    CustomerEntitlements,
    Decision,
    Entitlement,
    HoldState,
    Rejection,
    UsageEvent,
    decimal_or_none,
    entitlement_from_json,
    fallback_entitlement,
    time_or_none,
)
from ._wire import Call, Policy, new_id, path, quantity_text, time_text

MAX_BATCH = 1000  # events per request, the server's limit


def check(customer: str, feature: str, policy: Policy) -> Call[Entitlement]:
    return Call(
        "GET",
        path("customers", customer, "entitlements", feature),
        None,
        entitlement_from_json,
        lambda: fallback_entitlement(feature, policy.fail_open),
    )


def check_all(customer: str, policy: Policy) -> Call[CustomerEntitlements]:
    def parse(data: dict[str, Any]) -> CustomerEntitlements:
        return CustomerEntitlements(
            customer=data["customer"],
            plan=data.get("plan"),
            entitlements=tuple(entitlement_from_json(e) for e in data["entitlements"]),
            fail_open=policy.fail_open,
        )

    def fallback() -> CustomerEntitlements:
        return CustomerEntitlements(customer, None, (), UNAVAILABLE, policy.fail_open)

    return Call("GET", path("customers", customer, "entitlements"), None, parse, fallback)


def consume(
    customer: str,
    feature: str,
    quantity: Decimal | int | str,
    *,
    event_id: str | None,
    timestamp: dt.datetime | str | None,
    properties: Mapping[str, Any] | None,
    dry_run: bool,
    policy: Policy,
) -> Call[Decision]:
    """The event_id is chosen here, once: every retry of this call sends the same one, so the
    server counts the consume once however many attempts reach it."""
    event_id = event_id or new_id()
    body: dict[str, Any] = {"quantity": quantity_text(quantity), "event_id": event_id}
    if timestamp is not None:
        body["timestamp"] = time_text(timestamp)
    if properties is not None:
        body["properties"] = dict(properties)
    if dry_run:
        body["dry_run"] = True

    def parse(data: dict[str, Any]) -> Decision:
        entitlement = entitlement_from_json(data["entitlement"])
        return Decision(bool(data["allowed"]), data.get("reason"), entitlement, event_id)

    def fallback() -> Decision:
        entitlement = fallback_entitlement(feature, policy.fail_open)
        return Decision(entitlement.has_access, UNAVAILABLE, entitlement, event_id)

    return Call(
        "POST",
        path("customers", customer, "entitlements", feature, "consume"),
        body,
        parse,
        fallback,
    )


def _event_json(event: UsageEvent | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(event, UsageEvent):
        event = dataclasses.asdict(event)
    unknown = set(event) - {f.name for f in dataclasses.fields(UsageEvent)}
    if unknown:
        raise ValueError(f"unknown usage event fields: {', '.join(sorted(unknown))}")
    missing = {"customer", "feature", "quantity"} - set(event)
    if missing:
        raise ValueError(f"a usage event needs {', '.join(sorted(missing))}")
    body = {
        "event_id": event.get("event_id") or new_id(),
        "customer": event["customer"],
        "feature": event["feature"],
        "quantity": quantity_text(event["quantity"]),
    }
    if event.get("timestamp") is not None:
        body["timestamp"] = time_text(event["timestamp"])
    if event.get("properties") is not None:
        body["properties"] = dict(event["properties"])
    return body


def report(events: Iterable[UsageEvent | Mapping[str, Any]]) -> list[Call[BatchResult]]:
    """One call per 1000 events. Every event is checked (and given an event_id) before the
    first request: a bad quantity raises and nothing is sent."""
    bodies = [_event_json(e) for e in events]
    calls = []
    for start in range(0, len(bodies), MAX_BATCH):
        chunk = bodies[start : start + MAX_BATCH]

        def parse(
            data: dict[str, Any], start: int = start, chunk: list[dict[str, Any]] = chunk
        ) -> BatchResult:
            rejected = tuple(
                Rejection(
                    index=start + r["index"],
                    event_id=chunk[r["index"]]["event_id"],
                    code=r["error"]["code"],
                    message=r["error"]["message"],
                    details=r["error"].get("details") or {},
                )
                for r in data["rejected"]
            )
            ids = tuple(b["event_id"] for b in chunk)
            return BatchResult(data["accepted"], data["duplicates"], rejected, ids)

        calls.append(Call("POST", "usage", {"events": chunk}, parse))
    return calls


def batches_merge(results: Iterable[BatchResult]) -> BatchResult:
    merged = BatchResult(0, 0, (), ())
    for r in results:
        merged = BatchResult(
            merged.accepted + r.accepted,
            merged.duplicates + r.duplicates,
            merged.rejected + r.rejected,
            merged.event_ids + r.event_ids,
        )
    return merged


# --- reservations -----------------------------------------------------------------------------


def _reservations(customer: str, feature: str, *rest: str) -> str:
    return path("customers", customer, "entitlements", feature, "reservations", *rest)


def _hold_from_json(hold: HoldState, data: dict[str, Any]) -> HoldState:
    reservation = data.get("reservation") or {}
    entitlement = data.get("entitlement")
    return dataclasses.replace(
        hold,
        allowed=bool(data.get("allowed", hold.allowed)),
        reason=data.get("reason", hold.reason),
        quantity=decimal_or_none(reservation.get("quantity")) or hold.quantity,
        status=reservation.get("status", hold.status),
        expires_at=time_or_none(reservation.get("expires_at")) or hold.expires_at,
        entitlement=entitlement_from_json(entitlement) if entitlement else hold.entitlement,
    )


def reserve(
    customer: str,
    feature: str,
    quantity: Decimal | int | str,
    *,
    ttl_seconds: int,
    reservation_id: str | None,
    policy: Policy,
) -> Call[HoldState]:
    """The reservation_id is chosen here, once, and sent again on every retry."""
    text = quantity_text(quantity)
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise TypeError("ttl_seconds is an int")
    hold = HoldState(
        reservation_id or new_id(), customer, feature, Decimal(text), False, None, None
    )
    body = {"reservation_id": hold.id, "quantity": text, "ttl_seconds": ttl_seconds}

    def fallback() -> HoldState:
        entitlement = fallback_entitlement(feature, policy.fail_open)
        return dataclasses.replace(
            hold,
            allowed=entitlement.has_access,
            reason=UNAVAILABLE,
            status=UNAVAILABLE,
            entitlement=entitlement,
        )

    return Call(
        "POST",
        _reservations(customer, feature),
        body,
        lambda data: _hold_from_json(hold, data),
        fallback,
    )


def commit(hold: HoldState, quantity: Decimal | int | str | None) -> Call[HoldState]:
    """Commit on the server. A hold the fail policy allowed (the server could not be asked)
    records its usage as a reported event whose event_id is the reservation id: the id the
    server would have given it, so it counts once either way."""
    text = None if quantity is None else quantity_text(quantity)
    if not hold.allowed:
        raise ValueError(f"nothing is held: the reservation was denied ({hold.reason})")
    if hold.reason == UNAVAILABLE:  # held nowhere: the fail policy allowed it
        event = {"event_id": hold.id, "customer": hold.customer, "feature": hold.feature}
        event["quantity"] = text if text is not None else str(hold.quantity)
        (call,) = report([event])
        return Call(
            call.method,
            call.path,
            call.body,
            lambda data: dataclasses.replace(
                hold, status="committed", quantity=Decimal(event["quantity"])
            ),
        )
    return Call(
        "POST",
        _reservations(hold.customer, hold.feature, hold.id, "commit"),
        {} if text is None else {"quantity": text},
        lambda data: _hold_from_json(dataclasses.replace(hold, status="committed"), data),
    )


def release(hold: HoldState) -> Call[HoldState] | None:
    """Release on the server; None when nothing is held there (denied, or decided by the
    fail policy: any hold the server did make expires by itself)."""
    if not hold.allowed or hold.reason == UNAVAILABLE:
        return None
    return Call(
        "DELETE",
        _reservations(hold.customer, hold.feature, hold.id),
        None,
        lambda data: _hold_from_json(dataclasses.replace(hold, status="released"), data),
    )
