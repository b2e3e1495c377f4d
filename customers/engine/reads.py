"""Reads: the effective entitlements of a customer from its usage snapshot (Redis mirror or one
query) and its cached state, computed by the pure arithmetic."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.utils import timezone

from catalog.models import Feature, Reset
from core.errors import NotFound

from .. import snapshots
from ..models import Customer, UsageCounter
from ..periods import Window
from ..snapshots import Snapshot
from . import sql
from .arithmetic import METERED, ZERO, Entitlement, active_grants, entitlement_compute
from .state import CustomerState, customer_id_forget, customer_pk, features_cached, state_for


def feature_by_key(feature_key: str) -> Feature:
    """A feature by key from the cached catalog (a key never changes; a newly created feature
    is found by reloading). Raises NotFound."""
    feature = features_cached()[0].get(feature_key)
    if feature is None:
        feature = features_cached(version=-1)[0].get(feature_key)  # -1: reload now
    if feature is None:
        raise NotFound(f"No feature with key {feature_key!r}.", code="feature_not_found")
    return feature


def now_utc(at: dt.datetime | None) -> dt.datetime:
    return (at or timezone.now()).astimezone(dt.UTC)


def _snapshot_horizon(snapshot: Snapshot, state: CustomerState, at: dt.datetime) -> dt.datetime:
    """The first moment after `at` at which the snapshot could change by time alone."""
    moments = [w.end for k, w in state.windows(at).items() if k != Reset.NEVER]
    moments += [c.end for c in snapshot.counters]
    for g in snapshot.grants:
        moments += [t for t in (g.expires_at, g.voided_at) if t is not None]
    if snapshot.next_grant_at is not None:
        moments.append(snapshot.next_grant_at)
    # The first hold to expire: from then on its units count for nothing, read afresh.
    moments += [h.expires_at for h in snapshot.held]
    return min(m for m in moments if m is not None and m > at)


def held_at(snapshot: Snapshot, feature_id: int, at: dt.datetime) -> tuple[Decimal, int]:
    """The units held by reservations of a feature at `at` and how many hold them. The
    snapshot is never used past its first hold's expiry (its horizon), so every hold in it is
    still held; should one have expired, nothing of its feature is trusted as held."""
    for h in snapshot.held:
        if h.feature_id == feature_id and h.expires_at > at:
            return h.quantity, h.count
    return ZERO, 0


def window_counters(
    snapshot_counters: Iterable[UsageCounter], feature_id: int, windows: dict[str, Window]
) -> dict[str, UsageCounter]:
    """The counters of the windows in force, by window kind."""
    return {
        c.window: c
        for c in snapshot_counters
        if c.feature_id == feature_id and windows[c.window].start == c.start
    }


def snapshot_and_state(
    customer: Customer | str, feature_id: int | None, at: dt.datetime
) -> tuple[Snapshot, CustomerState]:
    """The customer's usage snapshot at `at` and its state: from the Redis mirror when it is
    valid (no query), else read in one query (and mirrored, every feature at once)."""
    pk = customer_pk(customer)
    # Only reads of the present use the mirror: a snapshot holds the windows in force when it
    # was read, and an invoice or report asking about a past moment needs that moment's.
    snapshot, ticket = None, None
    if at >= timezone.now() - snapshots.PRESENT:
        snapshot, ticket = snapshots.fetch(pk, at)
    if snapshot is None:
        wanted = None if ticket is not None else feature_id
        try:
            snapshot = sql.usage_snapshot(pk, wanted, at)
        except NotFound:
            if isinstance(customer, Customer):
                raise
            customer_id_forget(customer)  # deleted, or its external id now names another
            pk = customer_pk(customer)
            snapshot, ticket = sql.usage_snapshot(pk, feature_id, at), None
    features_cached(snapshot.version[1])
    state = state_for(customer if isinstance(customer, Customer) else pk, snapshot.version)
    if ticket is not None:
        snapshot.loaded_at = at
        snapshot.horizon = _snapshot_horizon(snapshot, state, at)
        snapshots.store(pk, snapshot, ticket)
    return snapshot, state


def entitlement_check(
    customer: Customer | str,
    feature_key: str | Feature,
    at: dt.datetime | None = None,
    *,
    state: CustomerState | None = None,
) -> Entitlement:
    """The effective entitlement of one feature at `at` (default now); `customer` is a
    Customer or an external id. One query when the customer's state is cached (else four),
    whatever the number of usage events. Raises NotFound for an unknown customer or feature."""
    at = now_utc(at)
    feature = feature_key if isinstance(feature_key, Feature) else feature_by_key(feature_key)
    snapshot, cached = snapshot_and_state(customer, feature.pk, at)
    state = state or cached
    feature = features_cached(snapshot.version[1])[1].get(feature.pk)
    if feature is None:
        raise NotFound(f"No feature with key {feature_key!r}.", code="feature_not_found")
    terms = state.terms_at(feature.pk, at)
    if feature.kind != METERED:
        return entitlement_compute(feature, terms, {}, [], {})
    windows = state.windows(at)
    counters = window_counters(snapshot.counters, feature.pk, windows)
    grants = active_grants(snapshot.grants, feature.pk, at)
    held = held_at(snapshot, feature.pk, at)
    return entitlement_compute(feature, terms, counters, grants, windows, *held)


def entitlements_resolve(
    customer: Customer | str, at: dt.datetime | None = None, *, with_state: bool = False
):
    """Every effective entitlement of a customer at `at`: features of the plan, of overrides in
    force and of active grants, ordered by feature name. One query when the customer's state is
    cached. With `with_state`, answers (state, entitlements)."""
    at = now_utc(at)
    snapshot, state = snapshot_and_state(customer, None, at)
    by_id = features_cached(snapshot.version[1])[1]
    terms = state.terms_all(at)
    grants_by_feature = defaultdict(list)
    for g in snapshot.grants:
        grants_by_feature[g.feature_id].append(g)
    feature_ids = (set(terms) | set(grants_by_feature)) & set(by_id)
    windows = state.windows(at)
    entitlements = [
        entitlement_compute(
            feature,
            terms.get(feature.pk),
            window_counters(snapshot.counters, feature.pk, windows),
            active_grants(grants_by_feature[feature.pk], feature.pk, at),
            windows,
            *held_at(snapshot, feature.pk, at),
        )
        for feature in sorted((by_id[f] for f in feature_ids), key=lambda f: (f.name, f.pk))
    ]
    return (state, entitlements) if with_state else entitlements
