"""Reversals: a usage event given back (DESIGN.md "Reversals: usage given back").

One transaction under the locks of a consume, in the same order (the counters of the event's
windows, then its grants in id order, then the event's row): every counter whose window
contains the event's timestamp drops by its quantity, the units it drew from grants leave the
`drawn` of its entitlement's counter and go back to those same grants unless they expired or
were voided since (`arithmetic.reversal_apply`). The event stays in the ledger, marked
`reversed_at`, with a `UsageReversal` row saying who, why and what went back where; every
figure derived from events leaves it out. Its event_id stays taken: a replay of it is a
duplicate that counts nothing."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from core.errors import Conflict, InvalidInput, NotFound

from .. import snapshots
from ..models import (
    REVERSAL_REASON_MAX,
    Customer,
    Grant,
    UsageCounter,
    UsageDraw,
    UsageEvent,
    UsageReversal,
)
from ..periods import Window
from ..snapshots import GrantRow
from .arithmetic import LATEST, Entitlement, reversal_apply
from .ledger import (
    counters_and_grants_save,
    counters_lock,
    event_recorded,
    retrying_deadlocks,
)
from .reads import entitlement_check
from .sql.common import GRANT_ROW
from .state import customer_pk, customer_state


@dataclass
class ReversalResult:
    event_id: str
    quantity: Decimal
    entitlement: Entitlement
    created: bool  # False: reversed before (this call changed nothing)
    reversal: UsageReversal


def reversal_reason_clean(reason) -> str:
    """A reversal's reason: text, not blank, at most REVERSAL_REASON_MAX characters."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput(
            "reason: say why the usage is given back.",
            details={"reason": ["This field is required."]},
        )
    reason = reason.strip()
    if len(reason) > REVERSAL_REASON_MAX or "\x00" in reason:
        raise InvalidInput(
            f"reason: at most {REVERSAL_REASON_MAX} characters of text.",
            details={"reason": [f"At most {REVERSAL_REASON_MAX} characters."]},
        )
    return reason


def usage_reverse(
    customer: Customer | str,
    event_id: str,
    *,
    reason,
    api_key_name: str = "",
    user=None,
    at: dt.datetime | None = None,
) -> ReversalResult:
    """Gives back the usage event `event_id` of `customer` (a Customer or an external id).

    Idempotent: an event reversed before answers that reversal (`created` False) whatever the
    reason given now. Locks like a consume (counters, then grants, then the event), so two
    reversals of one event give back once and a concurrent consume sees the counters before or
    after. Raises InvalidInput (reason), NotFound (`customer_not_found`, `event_not_found`),
    Conflict (`not_reversible`: an event of a `latest` feature, which reports a level).
    `at`: the moment of the reversal (default now), which says whether a grant has expired."""
    reason = reversal_reason_clean(reason)
    if not isinstance(event_id, str) or not event_id:
        raise NotFound("No such usage event.", code="event_not_found")
    pk = customer_pk(customer)
    with snapshots.write_guard([pk]):
        reversal, created = retrying_deadlocks(
            lambda: _reverse(pk, event_id, reason, api_key_name, user, at or timezone.now())
        )
        event = reversal.event
        # After the commit, under the guard: read from the database, not a stale snapshot.
        entitlement = entitlement_check(event.customer, event.feature)
    return ReversalResult(event.event_id, event.quantity, entitlement, created, reversal)


def _event_get(customer_id: int, event_id: str, *, lock: bool = False) -> UsageEvent:
    events = UsageEvent.objects.select_related("feature", "customer")
    if lock:
        events = events.select_for_update(of=("self",))
    event = event_recorded(customer_id, event_id, events)
    if event is None:
        raise NotFound(f"No usage event {event_id!r} for this customer.", code="event_not_found")
    if event.feature.aggregation == LATEST:
        raise Conflict(
            f"{event.feature.key!r} reports a level (latest): its events are not reversible; "
            "report the corrected level instead.",
            code="not_reversible",
            details={"event_id": event_id, "feature": event.feature.key},
        )
    return event


def _reverse(pk, event_id, reason, api_key_name, user, now) -> tuple[UsageReversal, bool]:
    with transaction.atomic():
        event = _event_get(pk, event_id)
        if event.reversed_at is not None:
            return _reversal_of(event), False
        keys = _counter_keys(event)
        locked = counters_lock(keys)[0]
        grant_ids = sorted(
            {
                g
                for g in UsageDraw.objects.filter(event=event).values_list("grant_id", flat=True)
                if g
            }
        )
        grants = {
            row[0]: GrantRow(*row)
            for row in Grant.objects.filter(pk__in=grant_ids)
            .select_for_update()
            .order_by("pk")
            .values_list(*GRANT_ROW)
        }
        for grant in grants.values():
            grant.loaded = grant.consumed
        event = _event_get(pk, event_id, lock=True)  # after the locks: a racing reversal is done
        if event.reversed_at is not None:
            return _reversal_of(event), False
        draws = list(UsageDraw.objects.filter(event=event, grant__isnull=False))
        takes = [(grants[d.grant_id], d.quantity) for d in draws]
        kind = draws[0].window if draws else None
        counters = {key[2]: counter for key, counter in locked.items()}
        given = reversal_apply(event.quantity, takes, kind, counters, now)
        counters_and_grants_save(locked.values(), grants.values())
        event.reversed_at = now
        event.save(update_fields=["reversed_at"])
        reversal = UsageReversal.objects.create(
            event=event,
            reason=reason,
            quantity=event.quantity,
            given_back={str(g): f"{units.normalize():f}" for g, units in given.items()},
            api_key_name=api_key_name or "",
            created_by=user if user is not None and user.is_authenticated else None,
            created_at=now,
        )
        snapshots.record_unheard_write()
        return reversal, True


def _reversal_of(event: UsageEvent) -> UsageReversal:
    reversal = UsageReversal.objects.get(event=event)
    reversal.event = event
    return reversal


def _counter_keys(event: UsageEvent) -> dict[tuple, Window]:
    """The counters that counted the event: of each window kind, the one containing its
    timestamp (the window the customer's state files it under, should a plan change have left
    two of a kind around it)."""
    at: dt.datetime = event.timestamp
    rows = UsageCounter.objects.filter(
        customer_id=event.customer_id, feature_id=event.feature_id, start__lte=at, end__gt=at
    ).values_list("window", "start", "end")
    by_kind: dict[str, list[tuple]] = {}
    for kind, start, end in rows:
        by_kind.setdefault(kind, []).append((start, end))
    windows = (
        customer_state(event.customer).windows(at)
        if any(len(found) > 1 for found in by_kind.values())
        else {}
    )
    keys = {}
    for kind, found in by_kind.items():
        chosen = next((f for f in found if kind in windows and windows[kind].start == f[0]), None)
        start, end = chosen or max(found)
        keys[(event.customer_id, event.feature_id, kind, start)] = Window(start, end)
    return keys
