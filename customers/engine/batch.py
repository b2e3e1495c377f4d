"""Reported usage in batches (DESIGN.md `POST /api/v1/usage`): set-based, a fixed number of
queries for a batch whatever the number of customers and events in it."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from catalog.models import Feature
from core.errors import InvalidInput, NotFound

from .. import snapshots
from ..models import UsageCounter
from ..periods import Window
from ..snapshots import GrantRow
from . import sql
from .arithmetic import (
    GRANT_ONLY_TERMS,
    LATEST,
    METERED,
    SUM,
    ZERO,
    BatchResult,
    FastBounds,
    active_grants,
    consume_fast_bounds,
    draw_apply,
    draw_plan,
    effective_kind,
    entitlement_compute,
    may_cross,
    overage_adding,
)
from .inputs import clean_event_id, clean_properties, parse_quantity, parse_timestamp
from .ledger import (
    counters_and_grants_save,
    counters_create,
    counters_lock,
    draw_rows,
    draws_insert,
    events_insert,
    grants_lock,
    retrying_deadlocks,
    usage_after,
)
from .sql import counter_values
from .state import (
    COUNTED_ALWAYS,
    CustomerKey,
    CustomerState,
    counted_kinds,
    counted_windows,
    features_cached,
    states_current,
)


def usage_record_batch(events: list[dict]) -> BatchResult:
    """Records reported usage, each event idempotent on (customer, event_id).

    Every event is validated on its own: a bad one is rejected with its index and error, the
    rest are recorded. Usage already happened, so it is recorded even past a hard limit (it
    shows as overage); it still burns the allowance, then grants. Set-based: a fixed number
    of queries for the batch, whatever the number of customers and events in it (the state of
    customers not cached is loaded in four queries for all)."""
    result = BatchResult()
    parsed = []
    customers = _batch_customers({str(e.get("customer")) for e in events if isinstance(e, dict)})
    catalog_version = next((c.catalog_version for c in customers.values()), None)
    features = features_cached(catalog_version)[0]
    seen: set[tuple[int, str]] = set()
    now = timezone.now()  # the time of events sent without one
    # The texts of quantities and timestamps repeat within a batch: each is parsed once.
    texts: dict = {}
    for index, raw in enumerate(events):
        try:
            item = _parse_batch_event(raw, customers, features, now, texts)
        except (InvalidInput, NotFound) as error:
            result.rejected.append(
                {
                    "index": index,
                    "error": {
                        "code": error.code,
                        "message": error.message,
                        "details": error.details,
                    },
                }
            )
            continue
        key = (item["customer"].pk, item["event_id"])
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        parsed.append(item)
    if not parsed:
        return result
    with snapshots.write_guard(i["customer"].pk for i in parsed):
        result.accepted = retrying_deadlocks(lambda: _record_batch_once(parsed))
    result.duplicates += len(parsed) - result.accepted
    return result


def _record_batch(
    parsed: list[dict], *, adding: bool = True, counted: dict[int, tuple] | None = None
) -> int:
    """One transaction: the ledger insert first, then the counters and grants of the events it
    recorded, locked like a consume's (counters, then grants). Answers how many it recorded.

    Inserting first keeps the insert and its foreign-key checks (made immediate) out of the
    time the counters stay locked, and a duplicate then needs no lock at all. Two batches
    insert in (customer, event_id) order and wait for each other only on an event_id they
    share; a batch and a consume reusing one event_id at the same instant may deadlock, and
    the victim is run again (`retrying_deadlocks`), finding the other's event recorded.

    On PostgreSQL (`adding`), the sums without grants are added to their counters by the very
    statement that locks the counters: the arithmetic that follows then only checks them for
    thresholds, and writes back the other counters. Should a grant have come into being
    meanwhile for one of them, the transaction is run again without adding.

    `counted`: the window kinds kept per feature (default: the catalog's as the customers were
    read). Checked once the counters are locked, since a kind that came into use meanwhile
    must be counted too: the transaction is then run again with the kinds now counted."""
    db = sql.db()
    outermost = not connection.in_atomic_block  # else the caller's checks stay as they are
    with transaction.atomic():
        inserted = events_insert(parsed, immediate=outermost)
        fresh = []
        for i in parsed:
            pk = inserted.get((i["customer"].pk, i["event_id"]))
            if pk is not None:
                fresh.append({**i, "pk": pk})
        if not fresh:
            return 0
        states = states_current({i["customer"].pk: i["customer"] for i in fresh}.values())
        customer_ids = {i["customer"].pk for i in fresh}
        feature_ids = {i["feature"].pk for i in fresh}
        stamps = [i["timestamp"] for i in fresh]
        since, until = min(stamps), max(stamps)
        granted = db.granted(customer_ids, feature_ids, since, until) if adding else None
        if counted is None:
            version = fresh[0]["customer"].catalog_version
            counted = {f: counted_kinds(f, version) for f in feature_ids}
        keys: dict[tuple, Window] = {}
        adds: dict[tuple, Decimal] = {}
        wanted: set[tuple] = set()  # the counters the arithmetic reads
        effective: dict[tuple, tuple] = {}  # an added-to counter -> (terms, feature) of its events
        for i in fresh:
            customer_id, feature_id = i["customer"].pk, i["feature"].pk
            state = states[customer_id]
            i["windows"] = windows = state.windows(i["timestamp"])
            i["kinds"] = kinds = counted[feature_id]
            adding_to = (
                granted is not None
                and i["feature"].aggregation == SUM
                and (customer_id, feature_id) not in granted
            )
            for kind in kinds:
                key = (customer_id, feature_id, kind, windows[kind].start)
                keys[key] = windows[kind]
                if adding_to:
                    adds[key] = adds.get(key, ZERO) + i["quantity"]
                else:
                    wanted.add(key)
            if adding_to:
                i["terms"] = terms = state.terms_at(feature_id, i["timestamp"])
                kind = effective_kind(terms or GRANT_ONLY_TERMS)
                key = (customer_id, feature_id, kind, windows[kind].start)
                wanted.add(key)
                if effective.setdefault(key, (terms, i["feature"]))[0] is not terms:
                    effective[key] = (None, None)  # under several terms: never quiet
        if db.turns():
            db.take_turns(customer_ids)
        # With the counters locked, a kind coming into use waits for this transaction (its
        # table lock) or has committed: read after them, the counted kinds are final.
        if adds:
            then = (customer_ids, feature_ids, since, until)
            quiet = _quiet_bounds(effective, adds)
            locked, now_counted, grants = _lock_and_add(db, keys, adds, wanted, then, quiet)
        else:
            locked = counters_lock(keys)[0]
            now_counted = counted_windows(feature_ids)
            grants = grants_lock(customer_ids, feature_ids, since, until)
        if any(now_counted.get(f, COUNTED_ALWAYS) != counted[f] for f in feature_ids):
            raise _CountedChanged({f: now_counted.get(f, COUNTED_ALWAYS) for f in feature_ids})
        if adds and any((g.customer_id, g.feature_id) not in granted for g in grants):
            raise _GrantAppeared
        _record_reported(fresh, states, locked, grants, adds)
        snapshots.record_unheard_write()
        return len(fresh)


def _record_batch_once(parsed: list[dict]) -> int:
    adding, counted = True, None
    while True:  # each rerun follows a change that happens once (grants: not adding again)
        try:
            return _record_batch(parsed, adding=adding, counted=counted)
        except _GrantAppeared:
            adding = False
        except _CountedChanged as changed:
            counted = changed.counted


class _GrantAppeared(Exception):
    """A grant committed between a batch's look at grants and its locks."""


class _CountedChanged(Exception):
    """A window kind came into use for a feature of the batch before it locked counters."""

    def __init__(self, counted: dict[int, tuple]):
        super().__init__(counted)
        self.counted = counted


def _quiet_bounds(effective: dict[tuple, tuple], adds: dict[tuple, Decimal]) -> dict:
    """The bounds within which each added-to counter is quiet: what the batch adds to it takes
    nothing past the allowance and crosses no threshold under the terms of the events whose
    effective counter it is (`consume_fast_bounds` of their total: usage only grows, so what
    one event passes, the total passes). A counter whose events have several terms, or none,
    has no bounds."""
    quiet: dict[tuple, FastBounds] = {}
    seen: dict[tuple, FastBounds | None] = {}  # most counters share their terms and total
    for key, (terms, feature) in effective.items():
        if terms is None:
            continue
        total = adds[key]
        alike = (terms.limit, terms.unlimited, terms.notify_at, terms.denied, total)
        if alike in seen:
            bounds = seen[alike]
        else:
            bounds = seen[alike] = consume_fast_bounds(feature, terms, total)
        if bounds is not None:
            quiet[key] = bounds
    return quiet


def _lock_and_add(
    db,
    keys: dict[tuple, Window],
    adds: dict[tuple, Decimal],
    wanted: set,
    then: tuple,
    quiet: dict,
) -> tuple[dict, dict[int, tuple], list[GrantRow]]:
    """PostgreSQL: `counters_lock` that also adds `adds` to their counters and answers the
    `wanted` ones of the customers' features that are not `quiet` (`_quiet_bounds`), creating
    the missing counters (then locked and added to in a second statement). In the same round
    trip as the first statement (`then`: customer ids, feature ids, since, until), the counted
    window kinds of the features and the grants locked, as `counted_windows` and `grants_lock`
    answer them. A counter created by the second statement is locked after those grants: a
    consume that created it at the same instant may deadlock with this batch, and the victim
    runs again (`retrying_deadlocks`)."""
    ordered = sorted(keys)
    locked, missing, counted_rows, grant_rows = db.lock_and_add(ordered, adds, wanted, then, quiet)
    if missing:
        counters_create(missing, keys)
        locked.update(db.lock_and_add(missing, adds, wanted)[0])  # every wanted one
        # A feature found quiet by the first statement but not by the second (a counter it
        # created) needs every wanted counter: read as they were before this batch added.
        loud = {key[:2] for key in locked}
        unread = {key: keys[key] for key in wanted if key not in locked and key[:2] in loud}
        if unread:
            for key, counter in counters_lock(unread)[0].items():
                counter.used -= adds.get(key, ZERO)
                counter.loaded = counter_values(counter)
                locked[key] = counter
    counted: dict[int, tuple[str, ...]] = {}
    for feature_id, kind in counted_rows:
        counted[feature_id] = counted.get(feature_id, COUNTED_ALWAYS) + (kind,)
    grants = [GrantRow(*row) for row in grant_rows]
    for g in grants:
        g.loaded = g.consumed
    return locked, counted, grants


def _batch_customers(external_ids: set[str]) -> dict[str, CustomerKey]:
    """The customers of a batch by external id, with the catalog's version, in one query of
    plain values (no model instances: a batch names up to a thousand customers)."""
    rows = sql.db().batch_customers(external_ids)
    return {row[1]: CustomerKey(row[0], row[1], row[2], row[3] or 0) for row in rows}


def _parse_batch_event(raw, customers, features, now: dt.datetime, texts: dict) -> dict:
    if not isinstance(raw, dict):
        raise InvalidInput("Each event is an object.", code="invalid_event")
    customer = customers.get(str(raw.get("customer")))
    if customer is None:
        raise NotFound(f"No customer {raw.get('customer')!r}.", code="customer_not_found")
    feature = features.get(str(raw.get("feature")))
    if feature is None:
        raise NotFound(f"No feature {raw.get('feature')!r}.", code="feature_not_found")
    if feature.kind != METERED:
        raise InvalidInput(f"{feature.key!r} is not a metered feature.", code="not_metered")
    properties = raw.get("properties")
    properties = {} if properties is None else clean_properties(properties)
    event_id = clean_event_id(raw.get("event_id"))
    quantity = raw.get("quantity")
    if type(quantity) is str:
        parsed = texts.get(("q", quantity))
        if parsed is None:
            texts[("q", quantity)] = parsed = parse_quantity(quantity, allow_zero=True)
        quantity = parsed
    else:
        quantity = parse_quantity(quantity, allow_zero=True)
    stamp = raw.get("timestamp")
    if stamp is None or stamp == "":
        stamp = now
    elif type(stamp) is str:
        parsed = texts.get(("t", stamp))
        if parsed is None:
            texts[("t", stamp)] = parsed = parse_timestamp(stamp, now)
        stamp = parsed
    else:
        stamp = parse_timestamp(stamp, now)
    return {
        "customer": customer,
        "feature": feature,
        "event_id": event_id,
        "quantity": quantity,
        "timestamp": stamp,
        "properties": properties,
    }


def _record_reported(
    ours: list[dict],
    states: dict[int, CustomerState],
    locked: dict[tuple, UsageCounter],
    all_grants: list[GrantRow],
    added: dict[tuple, Decimal] | None = None,
) -> None:
    """Applies newly recorded events to the locked counters and grants, in ledger order
    (timestamp, then id) per customer and feature, each under the terms in force at its
    timestamp. `added`: what the locking statement already added to counters (as locked, they
    read without it): those are not written again. The draw ledger (`UsageDraw`) gets what
    each event took from grants or put past its allowance."""
    groups: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for i in ours:
        groups[(i["customer"].pk, i["feature"].pk)].append(i)
    draws: list[tuple] = []
    grants_by_key = defaultdict(list)
    for g in all_grants:
        grants_by_key[(g.customer_id, g.feature_id)].append(g)
    for (customer_id, feature_id), group in groups.items():
        feature = group[0]["feature"]
        keyed = grants_by_key.get((customer_id, feature_id))
        # Without grants, a sum's usage draws nothing: it only adds to every counter.
        adds_only = feature.aggregation == SUM and not keyed
        if adds_only and _quiet(group[0], locked):
            continue
        state = states[customer_id]
        group.sort(key=lambda i: (i["timestamp"], i["pk"]))
        for i in group:
            if adds_only and "terms" in i:  # the locking statement added it to its counters
                _count_added(state, feature, i, locked, draws)
                continue
            at = i["timestamp"]
            terms = state.terms_at(feature_id, at)
            counters = {
                kind: locked[(customer_id, feature_id, kind, i["windows"][kind].start)]
                for kind in i["kinds"]
            }
            if adds_only and not may_cross(terms, counters, i["quantity"]):
                _overage_record(terms, counters, i, draws)
                for counter in counters.values():
                    counter.used += i["quantity"]
                continue
            grants = active_grants(keyed or (), feature_id, at)
            before = entitlement_compute(feature, terms, counters, grants, i["windows"])
            draw = draw_plan(
                feature,
                terms,
                counters,
                grants,
                i["quantity"],
                enforce=False,
                as_level=feature.aggregation == LATEST,
            )
            draw_apply(draw, terms, counters, at)
            draws += draw_rows(i["pk"], draw, effective_kind(terms or GRANT_ONLY_TERMS))
            after = entitlement_compute(feature, terms, counters, grants, i["windows"])
            usage_after(state, feature, before, after)
    for key, quantity in (added or {}).items():
        counter = locked.get(key)  # only the counters some event's arithmetic needs
        if counter is not None:  # the statement wrote it: nothing to write back
            counter.used = counter.loaded[0] + quantity
            counter.loaded = counter_values(counter)
    draws_insert(draws)
    counters_and_grants_save(locked.values(), all_grants)


def _quiet(first: dict, locked: dict) -> bool:
    """Whether the events of a customer's feature that the locking statement added to their
    counters need no arithmetic: it answered none of their counters (all quiet, so none of
    them takes anything past the allowance or crosses a threshold)."""
    if "terms" not in first:  # not added by the statement
        return False
    kind = effective_kind(first["terms"] or GRANT_ONLY_TERMS)
    key = (first["customer"].pk, first["feature"].pk, kind, first["windows"][kind].start)
    return key not in locked


def _overage_record(terms, counters: dict, i: dict, draws: list) -> None:
    """The overage row of a sum's event without grants (read before it is added)."""
    if i["quantity"] and (overage := overage_adding(terms, counters, i["quantity"])) > 0:
        kind = effective_kind(terms or GRANT_ONLY_TERMS)
        draws.append((i["pk"], None, kind, overage))


def _count_added(
    state: CustomerState, feature: Feature, i: dict, locked: dict, draws: list
) -> None:
    """An event of a sum without grants that the locking statement already added to every
    counter of its windows: the counters read back follow in memory, for the next events'
    thresholds (an event's effective kind may differ from its neighbours', when an override
    starts or ends between them), and a threshold it crosses is recorded."""
    terms, windows, quantity = i["terms"], i["windows"], i["quantity"]
    counters = {}
    for kind in i["kinds"]:
        counter = locked.get((i["customer"].pk, feature.pk, kind, windows[kind].start))
        if counter is not None:  # read back: the event's effective counter at least
            counters[kind] = counter
    _overage_record(terms, counters, i, draws)
    # No terms: no access, so no thresholds.
    crossing = terms is not None and may_cross(terms, counters, quantity)
    before = entitlement_compute(feature, terms, counters, [], windows) if crossing else None
    for counter in counters.values():
        counter.used += quantity
    if crossing:
        usage_after(
            state, feature, before, entitlement_compute(feature, terms, counters, [], windows)
        )
