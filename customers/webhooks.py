"""Webhooks: events POSTed as signed JSON to the endpoints registered in the admin.

Event types:
- `usage.threshold_crossed`: usage crossed a `notify_at` threshold (the same events as the
  emails, one per customer, feature, period and threshold);
- `entitlement.updated`: a plan entitlement, an override or a grant was created, changed or
  deleted.

Each event becomes one `WebhookDelivery` per active endpoint that wants it, written in the
transaction that makes the change and queued on commit (an outbox, like notifications). A
delivery is POSTed with

    X-Entitlements-Timestamp: <unix seconds>
    X-Entitlements-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>

and retried until the receiver answers 2xx (core.outbox: the same loop as the emails; every
try of one event carries its `X-Entitlements-Event-Id`, so a receiver drops a duplicate).
`webhook_signature_verify` is what a receiver does.
"""

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from decimal import Decimal
from functools import partial

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db.models import QuerySet
from django.utils import timezone

from core.api import decimal_str, time_str
from core.outbox import DeliveryFailed, Outbox, Undeliverable

from .models import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint

logger = logging.getLogger(__name__)

THRESHOLD_CROSSED = "usage.threshold_crossed"
ENTITLEMENT_UPDATED = "entitlement.updated"
SIGNATURE_HEADER = "X-Entitlements-Signature"
TIMESTAMP_HEADER = "X-Entitlements-Timestamp"


class WebhookDeliveryError(DeliveryFailed):
    """The receiver could not be reached or did not answer 2xx; the task retries."""


def timeout_seconds() -> float:
    return settings.WEBHOOK_TIMEOUT_SECONDS


def sweep_delay() -> dt.timedelta:
    """How long a delivery may stay pending before the sweep queues it again."""
    return dt.timedelta(seconds=settings.WEBHOOK_SWEEP_DELAY_SECONDS)


def give_up_after() -> dt.timedelta:
    """A delivery still failing this long after its event is marked failed (3 days)."""
    return dt.timedelta(seconds=settings.WEBHOOK_GIVE_UP_AFTER_SECONDS)


# Deliveries go through the outbox (core.outbox); tasks.py attaches the task that sends one.
OUTBOX = Outbox(
    model=WebhookDelivery,
    done=WebhookDeliveryStatus.DELIVERED,
    done_at="delivered_at",
    sweep_delay=sweep_delay,
    give_up_after=give_up_after,
    related=("endpoint",),
)


# --- signing ------------------------------------------------------------------------------


def webhook_signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `b"<timestamp>." + body` keyed with the secret."""
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def webhook_signature_verify(
    *,
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (replays of
    an old delivery are refused)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except (TypeError, ValueError):
        return False
    expected = webhook_signature(secret, timestamp, body)
    return age <= tolerance_seconds and hmac.compare_digest(expected, signature or "")


def payload_body(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


# --- recording ----------------------------------------------------------------------------


def event_record(event_type: str, data: dict | Callable[[], dict]) -> list[WebhookDelivery]:
    """Records one event for every active endpoint that wants `event_type`, and queues the
    deliveries when the transaction commits. `data` may be a callable, built only when some
    endpoint wants the event. Call it inside the transaction that makes the change."""
    endpoints = [e for e in WebhookEndpoint.objects.filter(active=True) if e.wants(event_type)]
    if not endpoints:
        return []
    event_id = f"evt_{uuid.uuid4().hex}"
    now = timezone.now()
    payload = {
        "id": event_id,
        "type": event_type,
        "created_at": time_str(now),
        "data": data() if callable(data) else data,
    }
    deliveries = WebhookDelivery.objects.bulk_create(
        [
            WebhookDelivery(
                endpoint=e,
                event_type=event_type,
                event_id=event_id,
                payload=payload,
                created_at=now,
                # The task queued on commit goes first; the sweep only if it got lost.
                next_attempt_at=now + sweep_delay(),
            )
            for e in endpoints
        ]
    )
    OUTBOX.queue_on_commit(d.pk for d in deliveries)
    return deliveries


def entitlement_updated_record(*, instance, action: str) -> list[WebhookDelivery]:
    """An `entitlement.updated` event for a PlanEntitlement, EntitlementOverride or Grant that
    was `created`, `updated` or `deleted` (called by the model signal receivers in apps.py)."""
    return event_record(ENTITLEMENT_UPDATED, partial(entitlement_event_data, instance, action))


def _related(instance, name: str, attr: str):
    # During a cascade delete the related row may already be gone.
    try:
        related = getattr(instance, name)
    except ObjectDoesNotExist:
        return None
    return getattr(related, attr, None) if related is not None else None


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return time_str(value)
    if hasattr(value, "amount") and hasattr(value, "currency"):  # Money: "0.10", "0.1234"
        amount = value.amount.normalize()
        if amount.as_tuple().exponent > -2:
            amount = amount.quantize(Decimal("0.01"))
        return {"amount": f"{amount:f}", "currency": str(value.currency)}
    if isinstance(value, Decimal):
        return decimal_str(value)
    return value


def entitlement_event_data(instance, action: str) -> dict:
    """The `data` of an `entitlement.updated` event: what changed, whose, and its values now
    (a receiver re-reads the effective entitlements of the customers concerned)."""
    label = instance._meta.label
    data = {
        "action": action,
        "feature": _related(instance, "feature", "key"),
    }
    if label == "catalog.PlanEntitlement":
        data |= {"source": "plan", "plan": _related(instance, "plan", "key"), "customer": None}
    else:
        data |= {
            "source": "override" if label == "customers.EntitlementOverride" else "grant",
            "plan": None,
            "customer": _related(instance, "customer", "external_id"),
        }
    if data["source"] == "grant":
        fields = ["quantity", "consumed", "source", "effective_at", "expires_at", "voided_at"]
    else:
        fields = ["enabled", "limit", "unlimited", "reset", "enforcement", "overage_price"]
        fields += ["notify_at", "value"]
        if data["source"] == "override":
            fields += ["starts_at", "ends_at", "reason"]
    data["values"] = {name: _text(getattr(instance, name, None)) for name in fields}
    data["id"] = instance.pk
    return data


# --- delivering ---------------------------------------------------------------------------


def webhook_delivery_send(*, delivery_id: int) -> bool:
    """POSTs one pending delivery; True if the receiver answered 2xx now.

    The outbox's loop (core.outbox): the attempt is counted before the POST, the row is locked
    during it (another worker skips it) and marked delivered in the same transaction; every
    try carries the same event id. Records the response code, the last error and when the
    sweep may try again; a delivery still failing `give_up_after()` after its event is marked
    failed. Raises WebhookDeliveryError on failure so that the task retries with backoff."""
    return OUTBOX.send(delivery_id, _deliver)


def _deliver(delivery: WebhookDelivery) -> dict:
    if not delivery.endpoint.active:
        raise Undeliverable("The endpoint was deactivated.")
    code, error = _post(delivery.endpoint, delivery)
    if error is not None:
        raise WebhookDeliveryError(error, response_code=code)
    return {"response_code": code}


def _post(endpoint: WebhookEndpoint, delivery: WebhookDelivery) -> tuple[int | None, str | None]:
    """(response code, error or None)."""
    body = payload_body(delivery.payload)
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        endpoint.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "Entitlements-Webhooks/1",
            "X-Entitlements-Event": delivery.event_type,
            "X-Entitlements-Event-Id": delivery.event_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: webhook_signature(endpoint.secret, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds()) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if not 200 <= code < 300:
        return code, f"HTTP {code}"
    return code, None


def deliveries_due(*, within: dt.timedelta = dt.timedelta(0), limit: int = 500) -> list[int]:
    """Ids of pending deliveries due for another try (core.outbox: `Outbox.due`)."""
    return OUTBOX.due(within=within, limit=limit)


def deliveries_retry(*, deliveries: QuerySet) -> int:
    """Pending or failed deliveries back to pending and queued on commit (the admin's
    "retry"). Delivered ones are left alone. Returns how many."""
    return OUTBOX.again(deliveries)
