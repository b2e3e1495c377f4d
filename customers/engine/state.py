"""What a customer's entitlements depend on besides usage, loaded and cached per process: the
subscription, the plan's terms, the overrides (CustomerState), and the catalog's features and
counted window kinds. Every cached value is tagged with the versions it was loaded at, and is
used only when the versions read from the database in the same query as usage still match."""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from django.conf import settings

from catalog.models import CatalogVersion, Feature, PlanEntitlement, Reset
from catalog.selectors import plan_version_entitlements
from core.errors import NotFound

from .. import snapshots
from ..models import (
    SUBSCRIPTION_CURRENT,
    CountedWindow,
    Customer,
    EntitlementOverride,
    Subscription,
    SubscriptionStatus,
)
from ..periods import Window, reset_window
from .arithmetic import Terms

WINDOW_KINDS = (Reset.BILLING_PERIOD, Reset.DAY, Reset.MONTH, Reset.NEVER, Reset.WEEK)
COUNTED_ALWAYS = (Reset.BILLING_PERIOD,)  # for every metered feature (see CountedWindow)


def terms_of(source: str, row: PlanEntitlement | EntitlementOverride) -> Terms:
    """The terms of a plan's entitlement or an override, as the arithmetic reads them."""
    return Terms(
        source=source,
        enabled=row.enabled,
        limit=row.limit,
        unlimited=row.unlimited,
        reset=row.reset,
        enforcement=row.enforcement,
        overage_price=row.overage_price,
        notify_at=tuple(row.notify_at or ()),
        value=row.value,
        show_on_invoice=row.show_on_invoice,
    )


@dataclass
class CustomerState:
    """What a customer's entitlements depend on besides usage: the active subscription, the
    plan's terms and every override. Cached per process, keyed on `version`: the customer's
    `state_version` and the catalog's version, which grow with every change and are read in
    the same query as usage, so a cached state is never used once out of date."""

    customer: Customer
    subscription: Subscription | None
    plan_terms: dict[int, Terms] = field(default_factory=dict)
    overrides: dict[int, list[EntitlementOverride]] = field(default_factory=dict)
    version: tuple[int, int] | None = None
    _windows: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def plan_id(self) -> int | None:
        return self.subscription.plan_id if self.subscription else None

    def windows(self, at: dt.datetime) -> dict[str, Window]:
        """The window of each reset kind containing `at` (the same dict, not to be changed,
        for every moment up to the next boundary of any of them)."""
        cached = self._windows
        if cached is not None and cached[0] <= at < cached[1]:
            return cached[2]
        windows = self._windows_at(at)
        points = [w.start for w in windows.values()] + [w.end for w in windows.values()]
        if self.subscription:
            points += [self.subscription.current_period_start, self.subscription.current_period_end]
        self._windows = (
            max(p for p in points if p <= at),
            min(p for p in points if p > at),
            windows,
        )
        return windows

    def _windows_at(self, at: dt.datetime) -> dict[str, Window]:
        sub = self.subscription
        anchor = sub.started_at if sub else None
        interval = sub.plan.interval if sub else "month"
        windows = {
            kind: reset_window(kind, at, anchor=anchor, interval=interval) for kind in WINDOW_KINDS
        }
        if sub and sub.current_period_start <= at < sub.current_period_end:
            # The stored period wins: a plan change may have moved it off the anchor grid.
            windows[Reset.BILLING_PERIOD] = Window(sub.current_period_start, sub.current_period_end)
        return windows

    def terms_at(self, feature_id: int, at: dt.datetime) -> Terms | None:
        """An override in force at `at` beats the plan. A subscription whose access is refused
        (past due, when so configured) marks the terms `denied`."""
        chosen = override_in_force(self.overrides.get(feature_id, ()), at)
        terms = terms_of("override", chosen) if chosen else self.plan_terms.get(feature_id)
        denial = subscription_access_denial(self.subscription)
        return replace(terms, denied=denial) if terms is not None and denial else terms

    def terms_all(self, at: dt.datetime) -> dict[int, Terms]:
        terms = {}
        for feature_id in set(self.plan_terms) | set(self.overrides):
            chosen = self.terms_at(feature_id, at)
            if chosen is not None:
                terms[feature_id] = chosen
        return terms


def subscription_access_denial(subscription: Subscription | None) -> str | None:
    """Why a subscription's entitlements are refused, or None: `payment_overdue` when it is
    past due and settings.BILLING_PAST_DUE_ACCESS is "deny" (the default, "keep", keeps
    access while the payment is chased)."""
    if subscription is None or subscription.status != SubscriptionStatus.PAST_DUE:
        return None
    return "payment_overdue" if settings.BILLING_PAST_DUE_ACCESS == "deny" else None


def states_load(customers: Iterable[Customer]) -> dict[int, CustomerState]:
    """Loads the state of several customers in three queries (subscriptions, plan terms,
    overrides), whatever their number."""
    customers = {c.pk: c for c in customers}
    if not customers:
        return {}
    subscriptions = {
        s.customer_id: s
        for s in Subscription.objects.filter(
            customer_id__in=customers, status__in=SUBSCRIPTION_CURRENT
        ).select_related("plan")
    }
    plan_terms: dict[int, dict[int, Terms]] = defaultdict(dict)
    version_ids = {s.plan_version_id for s in subscriptions.values()}  # each on one version
    if version_ids:
        for row in plan_version_entitlements(version_ids):
            plan_terms[row.version_id][row.feature_id] = terms_of("plan", row)
    overrides: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for row in EntitlementOverride.objects.filter(customer_id__in=customers):
        overrides[row.customer_id][row.feature_id].append(row)
    states = {}
    for pk, customer in customers.items():
        subscription = subscriptions.get(pk)
        states[pk] = CustomerState(
            customer=customer,
            subscription=subscription,
            plan_terms=dict(plan_terms[subscription.plan_version_id]) if subscription else {},
            overrides=dict(overrides[pk]),
        )
    return states


def customer_state(customer: Customer) -> CustomerState:
    """The customer's state read afresh (three queries)."""
    return states_load([customer])[customer.pk]


class _VersionedCache:
    """A small per-process LRU of values tagged with the version they were loaded at. Nothing
    is trusted without comparing versions read from the database in the same query as usage."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            item = self.items.get(key)
            if item is not None:
                self.items.move_to_end(key)
            return item

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def discard(self, key) -> None:
        with self.lock:
            self.items.pop(key, None)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_states = _VersionedCache(20_000)  # customer pk -> CustomerState


_customer_ids = _VersionedCache(100_000)  # external_id -> pk (an external id never changes)


# "features" -> (version, {key: Feature}, {pk: Feature}, {pk: counted window kinds})
_catalog = _VersionedCache(1)


def state_cached(pk: int) -> CustomerState | None:
    """The state cached for a customer, whatever its version (the caller compares it)."""
    return _states.get(pk)


def customer_id_forget(external_id) -> None:
    """Drops a cached external id (its customer was deleted, or it now names another)."""
    _customer_ids.discard(external_id)


def caches_clear() -> None:
    """Forgets every cached state (tests between databases; never needed for correctness)."""
    for cache in (_states, _customer_ids, _catalog):
        cache.clear()
    snapshots.forget()


def features_cached(version: int | None = None) -> tuple[dict[str, Feature], dict[int, Feature]]:
    """Every feature by key and by id; reloaded (two queries) when `version` is newer than the
    cached copy, or when nothing is cached."""
    cached = catalog_at(version)
    return cached[1], cached[2]


def catalog_at(version: int | None) -> tuple:
    cached = _catalog.get("features")
    if cached is None or (version is not None and cached[0] != version):
        loaded_at = version
        if loaded_at is None:
            loaded_at = CatalogVersion.objects.filter(pk=1).values_list("version", flat=True)
            loaded_at = loaded_at.first() or 0
        features = list(Feature.objects.all())
        cached = (
            loaded_at,
            {f.key: f for f in features},
            {f.pk: f for f in features},
            counted_windows(),
        )
        _catalog.put("features", cached)
    return cached


def counted_windows(feature_ids: Iterable[int] | None = None) -> dict[int, tuple[str, ...]]:
    """The window kinds whose counters are kept, per feature that counts more than the billing
    period (read now; `counted_kinds` answers the cached copy)."""
    rows = CountedWindow.objects.order_by("feature_id", "window")
    if feature_ids is not None:
        rows = rows.filter(feature_id__in=list(feature_ids))
    counted: dict[int, tuple[str, ...]] = defaultdict(lambda: COUNTED_ALWAYS)
    for feature_id, kind in rows.values_list("feature_id", "window"):
        counted[feature_id] += (kind,)
    return dict(counted)


def counted_kinds(feature_id: int, version: int | None) -> tuple[str, ...]:
    """The window kinds whose counters are kept for a feature, as of catalog `version` or any
    later one cached (kinds are only added: a writer whose lock then reads `version` keeps a
    kind too many at worst, never one too few). So a state cached before a catalog change
    does not reload the catalog that a newer state loaded."""
    cached = _catalog.get("features")
    if cached is None or (version is not None and cached[0] < version):
        cached = catalog_at(version)
    return cached[3].get(feature_id, COUNTED_ALWAYS)


def state_for(customer: Customer | int, version: tuple[int, int]) -> CustomerState:
    """The cached state if it was loaded at `version`, else a fresh one (three queries)."""
    pk = customer if isinstance(customer, int) else customer.pk
    cached = _states.get(pk)
    if cached is not None and cached.version == version:
        return cached
    if isinstance(customer, int):
        customer = Customer.objects.get(pk=pk)
    state = customer_state(customer)
    state.version = version
    _states.put(pk, state)
    return state


def customer_pk(customer: Customer | str) -> int:
    """A customer's id, from the object or from its external id (cached: it never changes)."""
    if isinstance(customer, Customer):
        return customer.pk
    pk = _customer_ids.get(customer)
    if pk is None:
        pk = Customer.objects.filter(external_id=customer).values_list("pk", flat=True).first()
        if pk is None:
            raise NotFound(f"No customer {customer!r}.", code="customer_not_found")
        _customer_ids.put(customer, pk)
    return pk


def override_in_force(overrides: Iterable[EntitlementOverride], at: dt.datetime):
    # Several may overlap; the most recently made one wins.
    active = [o for o in overrides if o.is_active_at(at)]
    return max(active, key=lambda o: (o.created_at, o.pk)) if active else None


def customer_get(pk: int) -> Customer:
    customer = Customer.objects.filter(pk=pk).first()
    if customer is None:
        raise NotFound("No such customer.", code="customer_not_found")
    return customer


class CustomerKey(NamedTuple):
    """A customer as a batch looks it up: the id and the versions its cached state must have
    (a tuple: a batch makes a thousand)."""

    pk: int
    external_id: str
    state_version: int
    catalog_version: int


def states_current(customers: Iterable[CustomerKey]) -> dict[int, CustomerState]:
    """States of customers read with their `state_version` and `catalog_version`: the cached
    ones still current, the others loaded together (four queries) and cached. A state loaded
    here is at least as new as the versions it is tagged with."""
    states, stale = {}, {}
    for customer in customers:
        version = (customer.state_version, customer.catalog_version)
        cached = _states.get(customer.pk)
        if cached is not None and cached.version == version:
            states[customer.pk] = cached
        else:
            stale[customer.pk] = customer
    if stale:
        for pk, state in states_load(Customer.objects.filter(pk__in=stale)).items():
            state.version = (stale[pk].state_version, stale[pk].catalog_version)
            _states.put(pk, state)
            states[pk] = state
    return states
