"""The writes every usage path shares (consume and batch): counter rows locked in one fixed
order and created when missing, grants locked in id order, the events inserted idempotently,
the changed counters and grants written back, a deadlock's victim run again. The statements
themselves are the database's (engine/sql)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db import OperationalError, connection
from django.utils import timezone

from ..models import Grant, Reservation, ReservationStatus, UsageCounter, UsageEvent
from ..periods import Window
from ..snapshots import CounterRow, GrantRow
from . import sql

if TYPE_CHECKING:
    from catalog.models import Feature

    from .state import CustomerState

DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE


def counters_lock(
    keys: dict[tuple, Window], *, version_of: int | None = None
) -> tuple[dict[tuple, CounterRow], tuple[int, int] | None]:
    """Locks the counter rows of `keys` in one fixed order (customer, feature, window, start),
    so that writers never deadlock, creating the missing ones first. With `version_of` (a
    customer id), also answers that customer's state version and the catalog's, read in the
    same query (None when the customer does not exist)."""
    ordered = sorted(keys)
    locked, version = sql.db().counters_select_for_update(ordered, version_of)
    missing = [key for key in ordered if key not in locked]
    if missing:
        counters_create(missing, keys)
        locked, version = sql.db().counters_select_for_update(ordered, version_of)
    return locked, version


def counters_create(missing: list[tuple], keys: dict[tuple, Window]) -> None:
    """Creates the counters of `missing` keys at zero, skipping any created meanwhile."""
    UsageCounter.objects.bulk_create(
        [
            UsageCounter(customer_id=c, feature_id=f, window=k, start=s, end=keys[(c, f, k, s)].end)
            for c, f, k, s in missing
        ],
        ignore_conflicts=True,
    )


def grants_lock(customer_ids, feature_ids, since: dt.datetime, until: dt.datetime) -> list:
    """Locks, in id order, the grants of these customers and features that may be in force
    between `since` and `until`, read as light rows that remember what they were locked at."""
    grants = [
        GrantRow(*row) for row in sql.db().grants_lock(customer_ids, feature_ids, since, until)
    ]
    for g in grants:
        g.loaded = g.consumed
    return grants


def reservations_held(
    customer_id: int, feature_id: int, at: dt.datetime, *, excluding: int | None = None
) -> tuple[Decimal, int]:
    """The units held at `at` by the reservations of a customer's feature (one range of the
    `reservation_held` index) and how many hold them, summed in Python (exact on SQLite too).
    Read under the counters' locks, which every hold takes: a statement of its own, so that
    on PostgreSQL it sees every hold committed while this one waited for them."""
    rows = Reservation.objects.filter(
        customer_id=customer_id,
        feature_id=feature_id,
        status=ReservationStatus.HELD,
        expires_at__gt=at,
    )
    if excluding is not None:
        rows = rows.exclude(pk=excluding)
    quantities = list(rows.values_list("quantity", flat=True))
    return sum(quantities, Decimal(0)), len(quantities)


def counters_and_grants_save(counters: Iterable[CounterRow], grants: Iterable[GrantRow]) -> None:
    """Writes back the locked counters and grants that changed (bulk_update's CASE
    expressions cost seconds for a batch of thousands: each database has its statement)."""
    counters = [c for c in counters if sql.counter_values(c) != c.loaded]
    if counters:
        sql.db().counters_save(counters)
    grants = [g for g in grants if g.consumed != g.loaded]
    if grants:
        Grant.objects.bulk_update(
            [Grant(pk=g.pk, consumed=g.consumed) for g in grants], ["consumed"]
        )


def events_insert(items: list[dict], *, immediate: bool = False) -> dict[tuple[int, str], int]:
    """INSERT .. ON CONFLICT DO NOTHING RETURNING: the (customer, event_id) pairs that this
    transaction recorded, with their ids. A pair another transaction recorded first is a
    duplicate, even when both arrive at once. Rows go in (customer, event_id) order so that two
    batches sharing event ids wait for each other instead of deadlocking. `immediate`: the
    foreign keys are checked by the insert itself, not at COMMIT."""
    items = sorted(items, key=lambda i: (i["customer"].pk, i["event_id"]))
    return sql.db().events_insert(items, timezone.now(), immediate=immediate)


def draw_rows(event_pk: int, draw, kind: str) -> list[tuple]:
    """The draw ledger's rows of one recorded event (`UsageDraw`): (event id, grant id or None
    for overage, window kind of the entitlement, units). None for what the allowance covered."""
    rows = [(event_pk, grant.pk, kind, take) for grant, take in draw.takes]
    if draw.overage > 0:
        rows.append((event_pk, None, kind, draw.overage))
    return rows


def draws_insert(rows: list[tuple]) -> None:
    """Records `draw_rows` (one statement; nothing when there are none)."""
    if rows:
        sql.db().draws_insert(rows)


def event_recorded(customer_id: int, event_id: str, events=None) -> UsageEvent | None:
    """The customer's event of that `event_id` (from `events`, a queryset of UsageEvent), or
    None: looked up by the unique (customer, event_id) index, whatever the statistics say of
    the customer (`sql.unplanned`)."""
    events = UsageEvent.objects if events is None else events
    found = events.filter(customer_id=sql.unplanned(customer_id), event_id=event_id)
    found = found.order_by()[:1]
    return next(iter(found), None)


def retrying_deadlocks(attempt):
    """Runs `attempt`, a whole transaction, again (twice at most) when PostgreSQL aborted it
    as the victim of a deadlock. Inside an outer transaction there is nothing to retry."""
    for tries in (1, 2, 3):
        try:
            return attempt()
        except OperationalError as error:
            deadlock = getattr(error.__cause__, "sqlstate", None) == DEADLOCK_DETECTED
            if not deadlock or tries == 3 or connection.in_atomic_block:
                raise


# What follows recorded usage in the same transaction, registered at start-up (apps.py: the
# threshold notifications), so that the engine imports none of its listeners.
_usage_hooks: list = []


def on_usage_recorded(hook) -> None:
    """`hook(customer=, feature=, before=, after=)` runs in every usage transaction, with the
    entitlement before and after the usage."""
    if hook not in _usage_hooks:
        _usage_hooks.append(hook)


def usage_after(state: CustomerState, feature: Feature, before, after) -> None:
    for hook in _usage_hooks:
        hook(customer=state.customer, feature=feature, before=before, after=after)
