"""Holds and commits outside any transaction on PostgreSQL, in two round trips like a consume
(`consume.usage_lock_first_trip`, then one statement that writes and commits): what keeps a
reservation's cost no more than a consume's. Only the plain case is taken here; anything else
(a denial, a replay, an error to raise, a threshold crossed, a window's counter to create, the
state out of date) answers None having written nothing, and the ordinary path
(engine/reservations.py) decides it in a transaction."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import orjson
from django.db import connection
from django.utils import timezone

from catalog.models import Feature

from .. import snapshots
from . import sql
from .arithmetic import Entitlement, commit_decide, hold_decide, thresholds_crossed
from .consume import _rollback_quietly, draw_pairs, usage_lock_first_trip
from .state import state_cached

HELD = "held"


def usable() -> bool:
    """Whether the two round trips may be taken: PostgreSQL, outside any transaction, with
    Redis having heard of the write (else the write must record its debt in a transaction)."""
    return sql.db().consume_in_two_trips and not connection.in_atomic_block and snapshots.heard()


def hold_two_trips(
    pk: int, feature: Feature, reservation_id: str, quantity: Decimal, ttl: int, at: dt.datetime
) -> tuple[int, Entitlement] | None:
    """An allowed hold made: (the new reservation's id, the entitlement with it held)."""
    state = state_cached(pk)
    if state is None or state.version is None:
        return None
    db = sql.db()
    with connection.cursor() as cursor:
        try:
            locked = usage_lock_first_trip(cursor, state, pk, feature, at)
            if locked is None:
                return None
            terms, counters, grants, held, _ = locked
            windows = state.windows(at)
            draw, entitlement = hold_decide(
                feature, terms, counters, grants, windows, quantity, held
            )
            if not draw.allowed:
                db.rollback(cursor)
                return None
            expires_at = at + dt.timedelta(seconds=ttl)
            values = [pk, feature.pk, reservation_id, quantity, ttl, expires_at, at]
            inserted = db.hold_write(cursor, values)
        except BaseException:
            _rollback_quietly(db, cursor)
            raise
    return (inserted[0][0], entitlement) if inserted else None


def commit_two_trips(
    pk: int, feature: Feature, reservation_id: str, quantity: Decimal | None, at: dt.datetime
) -> tuple[dict, Entitlement] | None:
    """A held reservation committed with usage recorded: (its fields as committed, the
    entitlement after)."""
    state = state_cached(pk)
    if state is None or state.version is None:
        return None
    db = sql.db()
    with connection.cursor() as cursor:
        try:
            locked = usage_lock_first_trip(cursor, state, pk, feature, at, reservation_id)
            if locked is None:
                return None
            terms, counters, grants, held, row = locked
            plain = row is not None and row[2] == HELD and row[3] > at and row[9] == feature.pk
            if plain and quantity is None:
                quantity = row[5]
            if not plain or not 0 < quantity <= row[5]:
                db.rollback(cursor)
                return None
            loaded = {g.pk: g.consumed for g in grants}
            windows = state.windows(at)
            draw, before, after = commit_decide(
                feature, terms, counters, grants, windows, quantity, at, held, row[5]
            )
            if thresholds_crossed(before, after):
                db.rollback(cursor)  # its notification: the ordinary path
                return None
            properties = orjson.dumps({"reservation": reservation_id}).decode()
            event = [pk, feature.pk, reservation_id, draw.recorded, at, properties, timezone.now()]
            changed = [g for g in grants if g.consumed != loaded[g.pk]]
            written = db.commit_write(
                cursor,
                event,
                list(counters.values()),
                changed,
                [quantity, at, row[1]],
                draw_pairs(draw, terms),
            )
        except BaseException:
            _rollback_quietly(db, cursor)
            raise
    if not written:
        return None
    fields = {
        "pk": row[1],
        "quantity": row[5],
        "expires_at": row[3],
        "committed_quantity": quantity,
        "committed_at": at,
        "event_id": written[0][0],
    }
    return fields, after
