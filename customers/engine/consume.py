"""The gate: an atomic check-and-record of one metered quantity (DESIGN.md "Consume").

One decision (`arithmetic.consume_decide`) taken on four paths: a dry run (on the snapshot,
nothing locked or written), the ordinary transaction (counters, then grants, locked in order)
and, on PostgreSQL outside a transaction, the same locks and writes in two round trips, or in
one for the simple case (`arithmetic.consume_fast_bounds`, checked by the statement that
writes)."""

from __future__ import annotations

import contextlib
import time

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from catalog.models import CatalogVersion, Feature
from core.errors import Conflict, InvalidInput, NotFound

from .. import snapshots
from ..models import Customer, UsageCounter, UsageEvent
from ..periods import Window
from ..snapshots import CounterRow, GrantRow
from . import sql
from .arithmetic import (
    GRANT_ONLY_TERMS,
    METERED,
    SUM,
    ZERO,
    ConsumeResult,
    active_grants,
    consume_decide,
    consume_fast_bounds,
    consume_result,
    effective_kind,
    entitlement_compute,
    thresholds_crossed,
)
from .combining import Combiner
from .inputs import clean_event_id, clean_properties, parse_quantity, parse_timestamp
from .ledger import (
    counters_and_grants_save,
    counters_lock,
    draw_rows,
    draws_insert,
    event_recorded,
    events_insert,
    grants_lock,
    reservations_held,
    retrying_deadlocks,
    usage_after,
)
from .reads import (
    entitlement_check,
    feature_by_key,
    held_at,
    snapshot_and_state,
    window_counters,
)
from .state import (
    CustomerKey,
    CustomerState,
    counted_kinds,
    customer_get,
    customer_id_forget,
    customer_pk,
    customer_state,
    features_cached,
    state_cached,
    state_for,
    states_current,
)


def entitlement_consume(
    customer: Customer | str,
    feature_key: str | Feature,
    quantity,
    event_id: str,
    *,
    timestamp=None,
    properties: dict | None = None,
    dry_run: bool = False,
) -> ConsumeResult:
    """The gate: atomically checks and records `quantity` of a metered feature; `customer` is a
    Customer or an external id.

    Locks the customer's counter rows of the feature (then its grants), so with N concurrent
    requests against a balance of B units exactly min(N, B) are allowed. Under a hard limit a
    request the balance cannot cover is denied and records nothing. Idempotent on `event_id`
    per customer: a replay returns the first outcome (allowed) and counts nothing; the same
    `event_id` reused for another feature or quantity raises Conflict. `dry_run` answers
    without recording. Raises NotFound (customer, feature), InvalidInput (`not_metered`,
    quantity, timestamp)."""
    feature = feature_key if isinstance(feature_key, Feature) else feature_by_key(feature_key)
    if feature.kind != METERED:
        raise InvalidInput(
            f"{feature.key!r} is a {feature.kind} feature; only metered features are consumed.",
            code="not_metered",
        )
    quantity = parse_quantity(quantity, allow_zero=False)
    event_id = clean_event_id(event_id)
    at = parse_timestamp(timestamp)
    properties = clean_properties(properties)
    if dry_run:
        return _consume_dry_run(customer, feature, quantity, at)
    pk = customer_pk(customer)
    with snapshots.write_guard([pk]):
        # A batch inserts its events before it locks counters: one reusing this event_id at
        # this very instant may deadlock with this consume, whichever PostgreSQL aborts retries.
        return retrying_deadlocks(
            lambda: _consume(customer, pk, feature, quantity, event_id, at, properties)
        )


def _consume_dry_run(customer, feature: Feature, quantity, at) -> ConsumeResult:
    """The decision on the current snapshot; nothing locked, nothing written."""
    snapshot, state = snapshot_and_state(customer, feature.pk, at)
    windows = state.windows(at)
    counters = window_counters(snapshot.counters, feature.pk, windows)
    for kind, window in windows.items():
        counters.setdefault(kind, UsageCounter(start=window.start, end=window.end))
    grants = active_grants(snapshot.grants, feature.pk, at)
    terms = state.terms_at(feature.pk, at)
    held = held_at(snapshot, feature.pk, at)
    draw, _, after = consume_decide(feature, terms, counters, grants, windows, quantity, at, held)
    return consume_result(draw, after)


def _consume(customer, pk, feature, quantity, event_id, at, properties) -> ConsumeResult:
    # Unheard by Redis, the write records its debt in its transaction: the ordinary path.
    db = sql.db()
    if db.consume_in_two_trips and not connection.in_atomic_block and snapshots.heard():
        fast = _consume_one_trip(db, pk, feature, quantity, event_id, at, properties)
        if fast is None:
            fast = _consume_two_trips(pk, feature, quantity, event_id, at, properties)
        if fast is not None:
            return fast
    return _consume_in_transaction(customer, pk, feature, quantity, event_id, at, properties)


# (customer, feature) -> until when the one-trip path is not tried: a grant was in force, or
# the consume was allowed but not simply (past a soft limit: its overage draw; a threshold
# crossed), so that such customers do not pay a useless round trip each time.
_SLOW_PAUSE = 10.0  # seconds
_slow_seen: dict[tuple[int, int], float] = {}


def _consume_one_trip(db, pk, feature, quantity, event_id, at, properties) -> ConsumeResult | None:
    """The consume in one round trip (sql.postgresql CONSUME_ONE_TRIP) when the decision is the
    simple one (`arithmetic.consume_fast_bounds`): the statement checks the bounds under its
    locks and writes, and COMMIT follows in the same message. The consumes of the same
    customer's feature that this process's other threads make meanwhile share one call
    (`_consume_together`). Answers None, having written nothing, when the two-trip path must
    decide: the state not cached or out of date, a grant in force, something drawn, a missing
    counter, or usage outside the bounds (a threshold to cross, or a hard limit, the units
    reservations hold set aside: a denial is answered from the counters it locked and the
    holds it read)."""
    state = state_cached(pk)
    if state is None or state.version is None:
        # Not yet seen by this process: loaded once, then the one trip as for any other.
        state = _state_loaded(pk)
        if state is None:
            return None
    key = (pk, feature.pk)
    if _slow_seen and _slow_seen.get(key, 0.0) > time.monotonic():
        return None
    terms = state.terms_at(feature.pk, at)
    bounds = consume_fast_bounds(feature, terms, quantity)
    if bounds is None:
        return None
    windows = state.windows(at)
    counted = counted_kinds(feature.pk, state.version[1])
    starts = tuple([windows[k].start for k in counted])
    kind = effective_kind(terms)
    # Consumes that can share one call (`_consume_together`): the same counters, decided on
    # the same state by the same rules.
    together = (pk, feature.pk, state.version, counted, starts, kind, bounds.held_counts,
                len(bounds.gaps))  # fmt: skip
    event = (at, event_id, quantity, orjson.dumps(properties or {}).decode(), bounds)
    try:
        rows = _consume_together(together, event)
    except BaseException:
        with contextlib.suppress(Exception), connection.cursor() as cursor:
            db.rollback(cursor)  # nothing to roll back if the connection is gone
        raise
    (_, inserted, _, _, _, reserved, holds, locked_first, _, went, state_version,
     catalog_version, granted), *locked = rows  # fmt: skip
    if granted:
        _slow_down(key)
    if (state_version, catalog_version) != state.version or locked_first != len(counted):
        # Out of date, or a counter its first statement did not lock (created meanwhile): the
        # units held were read before that counter's lock was, so nothing here is decided.
        return None
    held = (reserved, int(holds))
    counters = {
        window: CounterRow(rid, pk, feature.pk, window, t1, t2, n1, n2, n3, t3)
        for _, rid, window, t1, t2, n1, n2, n3, t3, *_ in locked
        if window in counted and windows[window].start == t1
    }  # fmt: skip
    if granted or len(counters) != len(counted):
        return None
    if went:
        if inserted is None:
            return _replay(state.customer, feature, quantity, event_id, at, state)
        # Within the bounds, the draw is the simple one (`consume_fast_bounds`, checked against
        # `consume_decide` by test_arithmetic): the quantity added to every counted window.
        for counter in counters.values():
            counter.used += quantity
        after = entitlement_compute(feature, terms, counters, [], windows, *held)
        return ConsumeResult(True, None, after)
    # The reference arithmetic on the counters as locked: the same decision as the full path.
    draw, before, after = consume_decide(feature, terms, counters, [], windows, quantity, at, held)
    if not draw.allowed:
        # Denied on the counters as locked (nothing was written), as the two-trip path would.
        replay = _replay(state.customer, feature, quantity, event_id, at, state)
        return replay or consume_result(draw, before)
    _slow_down(key)
    return None  # allowed, but not as simply (a threshold to cross, overage, something drawn)


def _consume_call(events: list[tuple]) -> list[list]:
    """One call of the one-trip consume for `events` of one `_consume_together` key (each
    (key, event)): each event's rows."""
    (pk, feature, version, counted, starts, kind, held_counts, _), _ = events[0]
    params = {
        "commit": "on" if settings.USAGE_SYNCHRONOUS_COMMIT else "off",
        "customer": pk,
        "feature": feature,
        "state": version[0],
        "catalog": version[1],
        "windows": list(counted),
        "starts": list(starts),
        "counted": len(counted),
        "kind": kind,
        "held_counts": held_counts,
        "now": timezone.now(),
    }
    return sql.db().consume_one_trip(connection, params, [event for _, event in events])


# This process's concurrent one-trip consumes of one customer's feature, sent as one call by
# one of their threads (engine/combining.py): one lock turn and one commit for all of them.
_combiner = Combiner(
    _consume_call,
    # The server refused the call (its error has a SQLSTATE): its transaction wrote nothing.
    resend=lambda error: getattr(error.__cause__, "sqlstate", None) is not None,
)


def _consume_together(together: tuple, event: tuple) -> list:
    return _combiner(together, (together, event))


def _state_loaded(pk: int) -> CustomerState | None:
    """A customer's state loaded and cached, tagged with the versions read just before it (so
    at least as new as them: a change in between fails the statement's version check, and the
    ordinary path decides)."""
    row = Customer.objects.filter(pk=pk).values_list("external_id", "state_version").first()
    if row is None:
        return None
    catalog = CatalogVersion.objects.filter(pk=1).values_list("version", flat=True).first()
    return states_current([CustomerKey(pk, row[0], row[1], catalog or 0)]).get(pk)


def _slow_down(key: tuple[int, int]) -> None:
    _slow_seen[key] = time.monotonic() + _SLOW_PAUSE
    if len(_slow_seen) > 10_000:
        _slow_seen.clear()


def usage_lock(customer, pk: int, feature: Feature, at) -> tuple:
    """In the caller's transaction, what every writer of a feature's usage locks and reads
    (consume, and reservations: engine/reservations.py): the counters of its windows, then its
    grants in force, with the customer's state as of the version read under the lock and the
    units held by reservations. Answers (state, windows, terms, counters, grants, held)."""
    state = state_cached(pk)
    if state is None:
        state = customer_state(customer if isinstance(customer, Customer) else customer_get(pk))
    keys = _consume_keys(state, pk, feature, at)
    locked, version = counters_lock(keys, version_of=pk)
    if version is None:
        customer_id_forget(customer)
        raise NotFound("No such customer.", code="customer_not_found")
    if state.version != version:
        # The cached state is out of date (or new): reload it; its windows may differ.
        features_cached(version[1])
        state = state_for(state.customer, version)
        keys = _consume_keys(state, pk, feature, at)
        if set(keys) - set(locked):
            locked.update(counters_lock(keys)[0])
    windows = state.windows(at)
    terms = state.terms_at(feature.pk, at)
    counters = {key[2]: locked[key] for key in keys}
    grants = active_grants(grants_lock([pk], [feature.pk], at, at), feature.pk, at)
    return state, windows, terms, counters, grants, reservations_held(pk, feature.pk, at)


def _consume_in_transaction(customer, pk, feature, quantity, event_id, at, properties):
    with transaction.atomic():
        state, windows, terms, counters, grants, held = usage_lock(customer, pk, feature, at)
        draw, before, after = consume_decide(
            feature, terms, counters, grants, windows, quantity, at, held
        )
        if not draw.allowed:
            # A replay of an allowed request answers its first outcome even if now denied.
            replay = _replay(state.customer, feature, quantity, event_id, at, state)
            return replay or consume_result(draw, before)
        item = {
            "customer": state.customer,
            "feature": feature,
            "event_id": event_id,
            "quantity": draw.recorded,
            "timestamp": at,
            "properties": properties or {},
        }
        inserted = events_insert([item])
        if not inserted:
            # Already recorded (the counters were locked, so the first has committed).
            return _replay(state.customer, feature, quantity, event_id, at, state)
        kind = effective_kind(terms or GRANT_ONLY_TERMS)
        draws_insert(draw_rows(inserted[(pk, event_id)], draw, kind))
        counters_and_grants_save(counters.values(), grants)
        snapshots.record_unheard_write()
        usage_after(state, feature, before, after)
        return ConsumeResult(True, None, after)


def _consume_two_trips(pk, feature, quantity, event_id, at, properties) -> ConsumeResult | None:
    """The consume outside any transaction, in two round trips (sql.postgresql): BEGIN and the
    locks (counters, then grants, with the versions), then the event, the counters, the grants
    and COMMIT in one statement that writes nothing if the event_id is already recorded. The
    same decision as `_consume_in_transaction`. Answers None, having written nothing, when the
    ordinary path must do it: the customer's state not cached or out of date, a window's
    counter to create, a threshold crossed (its notification)."""
    state = state_cached(pk)
    if state is None or state.version is None:
        return None
    db = sql.db()
    windows = state.windows(at)
    with connection.cursor() as cursor:
        try:
            locked = usage_lock_first_trip(cursor, state, pk, feature, at)
            if locked is None:
                return None
            terms, counters, grants, held, _ = locked
            loaded = {g.pk: g.consumed for g in grants}
            draw, before, after = consume_decide(
                feature, terms, counters, grants, windows, quantity, at, held
            )
            if not draw.allowed:
                db.rollback(cursor)
                replay = _replay(state.customer, feature, quantity, event_id, at, state)
                return replay or consume_result(draw, before)
            if thresholds_crossed(before, after):
                db.rollback(cursor)
                return None
            event = [pk, feature.pk, event_id, draw.recorded, at,
                     orjson.dumps(properties or {}).decode(), timezone.now()]  # fmt: skip
            changed = [g for g in grants if g.consumed != loaded[g.pk]]
            inserted = db.consume_write(
                cursor, event, list(counters.values()), changed, draw_pairs(draw, terms)
            )
        except BaseException:
            _rollback_quietly(db, cursor)
            raise
    if not inserted:
        # Already recorded (the counters were locked, so the first has committed).
        return _replay(state.customer, feature, quantity, event_id, at, state)
    return ConsumeResult(True, None, after)


def usage_lock_first_trip(cursor, state, pk: int, feature: Feature, at, reservation_id=None):
    """The first round trip of a usage write outside any transaction (PostgreSQL: consume,
    hold, commit): BEGIN, the counters of every window containing `at` and the grants in force
    locked with the versions, then the units held by reservations (and, with
    `reservation_id`, that reservation's row locked). Answers (terms, counters, grants, held,
    reservation row or None); or None, rolled back, when the ordinary path must do it (the
    cached state out of date, a window's counter to create)."""
    db = sql.db()
    windows = state.windows(at)
    counted = counted_kinds(feature.pk, state.version[1])  # before any lock is held
    synchronous = settings.USAGE_SYNCHRONOUS_COMMIT
    rows = db.consume_lock(cursor, pk, feature.pk, at, synchronous, reservation_id)
    # The counters of every window containing `at` (the index on open windows): those of the
    # windows in force among them, or the ordinary path creates the missing ones.
    version, counters, grants, held, reservation = None, {}, [], (ZERO, 0), None
    for row in rows:
        kind, rid, window, t1, t2, n1, n2, n3, t3, v1, v2 = row
        if kind == 0:
            version = None if v1 is None else (int(v1), int(v2 or 0))
        elif kind == 1:
            if window in counted and windows[window].start == t1:
                counters[window] = CounterRow(rid, pk, feature.pk, window, t1, t2, n1, n2, n3, t3)
        elif kind == 2:
            grants.append(GrantRow(rid, pk, feature.pk, t1, t2, n1, n2, t3))
        elif kind == 3:
            held = (n1, int(rid))  # the reservations held: their units and number
        else:
            reservation = row
    if version != state.version or len(counters) != len(counted):
        db.rollback(cursor)
        return None
    terms = state.terms_at(feature.pk, at)
    return terms, counters, active_grants(grants, feature.pk, at), held, reservation


def draw_pairs(draw, terms) -> tuple[str, list[tuple]]:
    """The draws of an event yet to be inserted (the two-trip paths insert them with its id):
    the entitlement's window kind and (grant id or None for overage, units)."""
    kind = effective_kind(terms or GRANT_ONLY_TERMS)
    return kind, [(grant, units) for _, grant, _, units in draw_rows(0, draw, kind)]


def _rollback_quietly(db, cursor) -> None:
    # Nothing to roll back if the connection is gone.
    with contextlib.suppress(Exception):
        db.rollback(cursor)


def _consume_keys(state: CustomerState, pk: int, feature: Feature, at) -> dict[tuple, Window]:
    """The counters a consume keeps: the feature's counted windows (as of the state's catalog
    version: once locked, the version read with them says whether that is still so)."""
    windows = state.windows(at)
    counted = counted_kinds(feature.pk, state.version[1] if state.version else None)
    return {(pk, feature.pk, k, windows[k].start): windows[k] for k in counted}


def _replay(customer, feature, quantity, event_id, at, state) -> ConsumeResult | None:
    """The first outcome of an event_id already recorded, or None if it is new."""
    pk = customer if isinstance(customer, int) else customer.pk
    event = event_recorded(pk, event_id, UsageEvent.objects.only("feature_id", "quantity"))
    if event is None:
        return None
    if event.feature_id != feature.pk or (
        feature.aggregation == SUM and event.quantity != quantity
    ):
        raise Conflict(
            f"event_id {event_id!r} was already used for another request.",
            code="idempotency_conflict",
            details={"event_id": event_id},
        )
    return ConsumeResult(True, None, entitlement_check(customer, feature, at, state=state), True)
