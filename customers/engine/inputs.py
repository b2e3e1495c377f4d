"""The engine's own checks of what a client sends (the lean path has no serializer): a bad
value is a 400 `invalid` naming the field, as a serializer's error would be (DESIGN.md)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core import bounds
from core.errors import InvalidInput


def field_refused(field: str, message: str) -> InvalidInput:
    """A 400 `invalid` naming the field, as a serializer's error would (DESIGN.md)."""
    return InvalidInput(f"{field}: {message}", details={field: [message]})


def parse_quantity(value, *, allow_zero: bool) -> Decimal:
    """An exact quantity within bounds.DECIMAL_RULE: positive, or >= 0 with `allow_zero`."""
    try:
        return bounds.decimal_parse(value, positive=not allow_zero)
    except bounds.Refused as refused:
        raise field_refused("quantity", f"This value {refused}.") from None


def parse_timestamp(value, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 instant (UTC when naive) that the periods can represent; `now` when absent."""
    if value is None or value == "":
        return now or timezone.now()
    if isinstance(value, dt.datetime):
        stamp = value
    else:
        try:
            stamp = parse_datetime(value) if isinstance(value, str) else None
        except ValueError:
            stamp = None
        if stamp is None:
            raise field_refused(
                "timestamp", "Use an ISO 8601 date and time, e.g. 2026-11-20T10:00:00Z."
            )
    if timezone.is_naive(stamp):
        stamp = stamp.replace(tzinfo=dt.UTC)
    try:
        return bounds.instant_check(stamp.astimezone(dt.UTC))
    except (bounds.Refused, OverflowError):
        raise field_refused(
            "timestamp", f"The date and time must be {bounds.INSTANT_RULE}."
        ) from None


def clean_properties(properties) -> dict:
    if properties is None:
        return {}
    if not isinstance(properties, dict):
        raise field_refused("properties", "properties must be an object.")
    if bounds.text_unstorable(properties):
        raise field_refused("properties", "Text in properties cannot contain NUL characters.")
    return properties


def clean_event_id(event_id, *, field: str = "event_id") -> str:
    """A client's idempotency key (an event's, or a reservation's: `field`)."""
    if not isinstance(event_id, str) or not event_id.strip():
        raise field_refused(field, f"{field} is required: a non-empty string.")
    if len(event_id) > 255:
        raise field_refused(field, f"{field} is at most 255 characters.")
    if bounds.text_unstorable(event_id):
        raise field_refused(field, f"{field} cannot contain NUL characters.")
    return event_id


def clean_reservation_id(reservation_id) -> str:
    """An event id (a commit records its usage under it) that a path can name (commit,
    release): the rule of ids in URLs, as a customer's external_id."""
    reservation_id = clean_event_id(reservation_id, field="reservation_id")
    try:
        return bounds.url_safe_check(reservation_id)
    except bounds.Refused as refused:
        raise field_refused("reservation_id", f"reservation_id {refused}.") from None


TTL_DEFAULT = 300  # seconds (DESIGN.md "Reservations")


def clean_ttl(value, maximum: int) -> int:
    """A hold's `ttl_seconds`: a whole number of seconds, 1 to `maximum`; the default when
    absent."""
    if value is None:
        return TTL_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise field_refused("ttl_seconds", f"ttl_seconds is a whole number from 1 to {maximum}.")
    return value
