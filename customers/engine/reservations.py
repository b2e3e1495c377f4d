"""Reservations: hold units of a metered feature, then commit what was used or release them
(DESIGN.md "Reservations: hold, then commit or release").

A hold takes the same locks as a consume (`consume.usage_lock`: the feature's counters in
their fixed order, then its grants) and decides with the gate's arithmetic
(`arithmetic.hold_decide`): under a hard limit the quantity must fit in the balance less the
units already held; a soft limit or no limit allows it. Held units count against the balance
of every read (the snapshot carries them) and of every consume until `expires_at`; past it
they count for nothing, at once, without any job. A commit records the usage with
`event_id` = the reservation id, burning down allowance then grants like a consume but never
denied (the hold guaranteed it), in the same transaction as the reservation's change, and
notifies threshold crossings as a consume does (`ledger.usage_after`).

`latest` features (levels): a hold of q asks for level + held + q <= capacity, like a consume
of q; its commit records level + q as the new level."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from catalog.models import Feature
from core.errors import Conflict, InvalidInput, NotFound

from .. import snapshots
from ..models import RESERVATION_TTL_MAX, Customer, Reservation, ReservationStatus, UsageEvent
from . import reservation_trips
from .arithmetic import (
    GRANT_ONLY_TERMS,
    METERED,
    SUM,
    Entitlement,
    commit_decide,
    effective_kind,
    entitlement_compute,
    hold_decide,
)
from .consume import usage_lock
from .inputs import clean_reservation_id, clean_ttl, field_refused, parse_quantity
from .ledger import (
    counters_and_grants_save,
    draw_rows,
    draws_insert,
    event_recorded,
    events_insert,
    retrying_deadlocks,
    usage_after,
)
from .reads import entitlement_check, feature_by_key
from .state import customer_pk

HELD, COMMITTED = ReservationStatus.HELD, ReservationStatus.COMMITTED
RELEASED, EXPIRED = ReservationStatus.RELEASED, ReservationStatus.EXPIRED


@dataclass
class HoldResult:
    allowed: bool
    reason: str | None  # None | "limit_exceeded" | "no_access" | "payment_overdue"
    reservation: Reservation | None  # None when denied: nothing is held
    entitlement: Entitlement
    replayed: bool = False


@dataclass
class ReservationResult:
    reservation: Reservation
    entitlement: Entitlement


def reservation_hold(
    customer: Customer | str,
    feature_key: str | Feature,
    reservation_id,
    quantity,
    *,
    ttl_seconds=None,
) -> HoldResult:
    """Holds `quantity` units for `ttl_seconds` (default 300, at most a day) if they fit.

    Locks the feature's counters, then its grants, as a consume does: N concurrent holds (and
    consumes) against a balance of B hold exactly what fits. Idempotent on `reservation_id`
    per customer: the same id again answers the reservation it made (allowed, whatever its
    status since); a denied hold stores nothing, so its retry is decided afresh; the same id
    with another feature or quantity raises Conflict (`idempotency_conflict`). Raises NotFound
    (customer, feature), InvalidInput (`not_metered`, quantity, reservation_id, ttl_seconds)."""
    feature = _metered(feature_key)
    quantity = parse_quantity(quantity, allow_zero=False)
    reservation_id = clean_reservation_id(reservation_id)
    ttl = clean_ttl(ttl_seconds, RESERVATION_TTL_MAX)
    pk = customer_pk(customer)
    with snapshots.write_guard([pk]):
        if reservation_trips.usable():
            at = timezone.now()
            made = reservation_trips.hold_two_trips(pk, feature, reservation_id, quantity, ttl, at)
            if made is not None:
                reservation = Reservation(
                    pk=made[0], customer_id=pk, feature=feature, reservation_id=reservation_id,
                    quantity=quantity, status=HELD, ttl_seconds=ttl,
                    expires_at=at + dt.timedelta(seconds=ttl), created_at=at,
                )  # fmt: skip
                return HoldResult(True, None, reservation, made[1])
        try:
            return retrying_deadlocks(
                lambda: _hold(customer, pk, feature, reservation_id, quantity, ttl)
            )
        except IntegrityError:
            # Made meanwhile by a request of the same id (for this feature, or another: then
            # the two did not share the counters' locks): the first outcome answers.
            replay = _hold_replay(customer, pk, feature, reservation_id, quantity)
            if replay is None:
                raise
            return replay


def _hold(customer, pk, feature, reservation_id, quantity, ttl) -> HoldResult:
    at = timezone.now()
    with transaction.atomic():
        state, windows, terms, counters, grants, held = usage_lock(customer, pk, feature, at)
        draw, entitlement = hold_decide(feature, terms, counters, grants, windows, quantity, held)
        if not draw.allowed:
            replay = _hold_replay(customer, pk, feature, reservation_id, quantity)
            if replay is not None:
                return replay
            if draw.reason == "no_access":
                entitlement = replace(entitlement, has_access=False)
            return HoldResult(False, draw.reason, None, entitlement)
        reservation = Reservation(
            customer=state.customer,
            feature=feature,
            reservation_id=reservation_id,
            quantity=quantity,
            status=HELD,
            ttl_seconds=ttl,
            expires_at=at + dt.timedelta(seconds=ttl),
            created_at=at,
        )
        reservation.save(force_insert=True)  # a reservation_id already used: IntegrityError
        snapshots.record_unheard_write()
        return HoldResult(True, None, reservation, entitlement)


def _hold_replay(customer, pk, feature, reservation_id, quantity) -> HoldResult | None:
    """The first outcome of a reservation_id already held, or None if it is new."""
    reservation = _find(pk, reservation_id)
    if reservation is None:
        return None
    if reservation.feature_id != feature.pk or reservation.quantity != quantity:
        raise Conflict(
            f"reservation_id {reservation_id!r} was already used for another request.",
            code="idempotency_conflict",
            details={"reservation_id": reservation_id},
        )
    entitlement = entitlement_check(customer, feature)
    return HoldResult(True, None, reservation, entitlement, replayed=True)


def reservation_commit(
    customer: Customer | str, feature_key: str | Feature, reservation_id: str, quantity=None
) -> ReservationResult:
    """Records `quantity` (default: all the held quantity; at most it, else InvalidInput) as
    usage with `event_id` = the reservation id, and releases the rest. 0 means nothing was
    used: no event is recorded and the hold ends as committed. The same commit again answers
    the same (another quantity: Conflict `idempotency_conflict`). Raises NotFound
    (`reservation_not_found`), Conflict (`reservation_expired`, `reservation_released`, or
    `idempotency_conflict` when the event_id was recorded for another feature or quantity)."""
    feature = _metered(feature_key)
    if quantity is not None:
        quantity = parse_quantity(quantity, allow_zero=True)
    pk = customer_pk(customer)
    with snapshots.write_guard([pk]):
        if reservation_trips.usable() and isinstance(reservation_id, str):
            at = timezone.now()
            done = reservation_trips.commit_two_trips(pk, feature, reservation_id, quantity, at)
            if done is not None:
                fields, after = done
                reservation = Reservation(
                    customer_id=pk, feature=feature, reservation_id=reservation_id,
                    status=COMMITTED, **fields,
                )  # fmt: skip
                return ReservationResult(reservation, after)
        return retrying_deadlocks(lambda: _commit(customer, pk, feature, reservation_id, quantity))


def _commit(customer, pk, feature, reservation_id, quantity) -> ReservationResult:
    at = timezone.now()
    with transaction.atomic():
        state, windows, terms, counters, grants, held = usage_lock(customer, pk, feature, at)
        reservation = _locked(pk, feature, reservation_id)
        if reservation.status == COMMITTED:
            if quantity is not None and quantity != reservation.committed_quantity:
                raise Conflict(
                    f"Reservation {reservation_id!r} was committed with "
                    f"{reservation.committed_quantity.normalize():f}.",
                    code="idempotency_conflict",
                    details={"reservation_id": reservation_id},
                )
            after = entitlement_compute(feature, terms, counters, grants, windows, *held)
            return ReservationResult(reservation, after)
        _still_held(reservation, at)
        if quantity is None:
            quantity = reservation.quantity
        if quantity > reservation.quantity:
            held_text = f"{reservation.quantity.normalize():f}"
            raise field_refused("quantity", f"At most the held quantity ({held_text}).")
        reserved, holds = held
        event = None
        if quantity > 0:
            draw, before, after = commit_decide(
                feature, terms, counters, grants, windows, quantity, at, held, reservation.quantity
            )
            item = {
                "customer": state.customer,
                "feature": feature,
                "event_id": reservation_id,
                "quantity": draw.recorded,
                "timestamp": at,
                "properties": {"reservation": reservation_id},
            }
            recorded = events_insert([item])
            if recorded:
                event = recorded[(pk, reservation_id)]
                kind = effective_kind(terms or GRANT_ONLY_TERMS)
                draws_insert(draw_rows(event, draw, kind))
                counters_and_grants_save(counters.values(), grants)
                usage_after(state, feature, before, after)
            else:
                # Already recorded under this id (a report of the same usage): counted once.
                event = _event_of(pk, feature, reservation_id, draw.recorded)
                _unapply(counters, grants)
                rest = (reserved - reservation.quantity, holds - 1)
                after = entitlement_compute(feature, terms, counters, grants, windows, *rest)
        else:
            rest = (reserved - reservation.quantity, holds - 1)
            after = entitlement_compute(feature, terms, counters, grants, windows, *rest)
        reservation.status, reservation.committed_quantity = COMMITTED, quantity
        reservation.committed_at, reservation.event_id = at, event
        reservation.save(update_fields=["status", "committed_quantity", "committed_at", "event"])
        snapshots.record_unheard_write()
        return ReservationResult(reservation, after)


def reservation_release(
    customer: Customer | str, feature_key: str | Feature, reservation_id: str
) -> ReservationResult:
    """Releases a held reservation: its units count for nothing from now on. Again (or for
    one already expired, which holds nothing): the same answer. Raises NotFound
    (`reservation_not_found`), Conflict (`reservation_committed`)."""
    feature = _metered(feature_key)
    pk = customer_pk(customer)
    with snapshots.write_guard([pk]):
        at = timezone.now()
        with transaction.atomic():
            # Only this row is locked: a release gives units back, so a concurrent hold that
            # does not see it yet only errs on the safe side.
            reservation = _locked(pk, feature, reservation_id)
            if reservation.status == COMMITTED:
                raise Conflict(
                    f"Reservation {reservation_id!r} was committed; it cannot be released.",
                    code="reservation_committed",
                    details={"reservation_id": reservation_id},
                )
            if reservation.status_at(at) == HELD:
                reservation.status, reservation.released_at = RELEASED, at
                reservation.save(update_fields=["status", "released_at"])
                snapshots.record_unheard_write()
        return ReservationResult(reservation, entitlement_check(customer, feature))


def reservation_get(
    customer: Customer | str, feature_key: str | Feature, reservation_id: str
) -> ReservationResult:
    """A reservation as it stands now, with its feature's entitlement. Raises NotFound."""
    feature = _metered(feature_key)
    reservation = _find(customer_pk(customer), reservation_id)
    if reservation is None or reservation.feature_id != feature.pk:
        raise _not_found(reservation_id)
    return ReservationResult(reservation, entitlement_check(customer, feature))


def reservations_expire(*, batch: int = 1000) -> int:
    """Marks `expired` the holds past their expiry, `batch` rows per transaction (tidiness
    only: such a hold already counts for nothing and reads as expired, so no snapshot changes).
    A commit that holds a row's lock first wins it (the row is no longer `held`). Safe to run
    twice, and concurrently. Answers how many it marked."""
    marked = 0
    while True:
        with transaction.atomic():
            due = list(
                Reservation.objects.filter(status=HELD, expires_at__lte=timezone.now())
                .order_by("pk")
                .values_list("pk", flat=True)[:batch]
            )
            if due:
                marked += Reservation.objects.filter(
                    pk__in=due, status=HELD, expires_at__lte=timezone.now()
                ).update(status=EXPIRED)
        if len(due) < batch:
            return marked


# --- helpers ------------------------------------------------------------------------------


def _metered(feature_key: str | Feature) -> Feature:
    feature = feature_key if isinstance(feature_key, Feature) else feature_by_key(feature_key)
    if feature.kind != METERED:
        raise InvalidInput(
            f"{feature.key!r} is a {feature.kind} feature; only metered features are reserved.",
            code="not_metered",
        )
    return feature


def _find(pk: int, reservation_id) -> Reservation | None:
    if not isinstance(reservation_id, str):
        return None
    return Reservation.objects.filter(customer_id=pk, reservation_id=reservation_id).first()


def _locked(pk: int, feature: Feature, reservation_id: str) -> Reservation:
    reservation = (
        Reservation.objects.select_for_update()
        .filter(customer_id=pk, reservation_id=reservation_id, feature=feature)
        .first()
    )
    if reservation is None:
        raise _not_found(reservation_id)
    return reservation


def _not_found(reservation_id) -> NotFound:
    return NotFound(f"No reservation {reservation_id!r}.", code="reservation_not_found")


def _still_held(reservation: Reservation, at: dt.datetime) -> None:
    status = reservation.status_at(at)
    if status == RELEASED:
        raise Conflict(
            f"Reservation {reservation.reservation_id!r} was released.",
            code="reservation_released",
            details={"reservation_id": reservation.reservation_id},
        )
    if status == EXPIRED:
        raise Conflict(
            f"Reservation {reservation.reservation_id!r} expired at "
            f"{reservation.expires_at.isoformat()}; its units were freed.",
            code="reservation_expired",
            details={"reservation_id": reservation.reservation_id},
        )


def _event_of(pk: int, feature: Feature, event_id: str, recorded: Decimal) -> int:
    """The usage event already recorded under a committed reservation's id, if it is the same
    usage; else Conflict."""
    event = event_recorded(pk, event_id, UsageEvent.objects.only("pk", "feature_id", "quantity"))
    if event.feature_id != feature.pk or (
        feature.aggregation == SUM and event.quantity != recorded
    ):
        raise Conflict(
            f"event_id {event_id!r} was already used for another request.",
            code="idempotency_conflict",
            details={"event_id": event_id},
        )
    return event.pk


def _unapply(counters: dict, grants: list) -> None:
    """Puts the locked rows back as they were read (a draw applied in memory, not written)."""
    for counter in counters.values():
        counter.used, counter.drawn, counter.level, counter.level_at = counter.loaded
    for grant in grants:
        grant.consumed = grant.loaded
