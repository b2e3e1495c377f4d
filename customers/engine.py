"""The entitlement engine: the one place that computes what a customer may use.

Every page, API view and invoice calls these functions (DESIGN.md "Customers and the engine"):

- `entitlements_resolve(customer, at=None)`: every effective entitlement of a customer;
- `entitlement_check(customer, feature_key, at=None)`: one;
- `entitlement_consume(customer, feature_key, quantity, event_id, ...)`: the atomic gate;
- `usage_record_batch(events)`: reported usage, idempotent per event.

Usage lives in `UsageCounter` rows (one per customer, feature and reset window) updated in the
same transaction as the ledger's `UsageEvent`, so a check reads a fixed number of rows whatever
the number of events. Writers lock the counter rows of their (customer, feature) first, in a
fixed order, then the grants, so concurrent consumes serialise on the counter and never
deadlock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal

import orjson
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Q, Subquery
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from djmoney.money import Money

from catalog.models import (
    CatalogVersion,
    Enforcement,
    Feature,
    FeatureKind,
    PlanEntitlement,
    Reset,
)
from core import bounds
from core.errors import Conflict, InvalidInput, NotFound

from . import capacity as capacity_rule
from . import snapshots
from .models import (
    CountedWindow,
    Customer,
    EntitlementOverride,
    Grant,
    Subscription,
    SubscriptionStatus,
    UsageCounter,
    UsageEvent,
)
from .periods import Window, reset_window
from .snapshots import CounterRow, GrantRow, Snapshot

ZERO = Decimal("0")
DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE
WINDOW_KINDS = (Reset.BILLING_PERIOD, Reset.DAY, Reset.MONTH, Reset.NEVER, Reset.WEEK)
COUNTED_ALWAYS = (Reset.BILLING_PERIOD,)  # for every metered feature (see CountedWindow)
LOCK_CHUNK = 1000  # counter keys per locking query (4 parameters each)


# --- what the engine answers --------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """The entitlement values in force for one feature: an override's or the plan's."""

    source: str  # "override" | "plan" | "grant" (units granted without any entitlement)
    enabled: bool = True
    limit: Decimal | None = None
    unlimited: bool = False
    reset: str = Reset.BILLING_PERIOD
    enforcement: str = Enforcement.HARD
    overage_price: Money | None = None
    notify_at: tuple[int, ...] = (80, 100)
    value: str = ""
    show_on_invoice: bool = False

    @classmethod
    def of(cls, source: str, row: PlanEntitlement | EntitlementOverride) -> Terms:
        return cls(
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


GRANT_ONLY_TERMS = Terms(source="grant", limit=ZERO, notify_at=(80, 100))


@dataclass(frozen=True)
class Entitlement:
    """One effective entitlement: the `E` of the API (DESIGN.md "HTTP API")."""

    feature: str
    name: str
    kind: str
    unit: str
    has_access: bool
    value: str | None = None
    unlimited: bool = False
    limit: Decimal | None = None
    granted: Decimal | None = None
    usage: Decimal | None = None
    balance: Decimal | None = None
    overage: Decimal | None = None
    enforcement: str | None = None
    source: str | None = None
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None
    resets_at: dt.datetime | None = None
    # Not in the API's E, but what pages, notifications and invoices need.
    reset: str | None = None
    aggregation: str | None = None
    notify_at: tuple[int, ...] = ()
    show_on_invoice: bool = False
    overage_price: Money | None = None
    feature_id: int | None = None

    @property
    def percent_used(self) -> Decimal | None:
        """Usage as a percent of allowance plus grants (past 100 when over); None when
        unlimited or not metered. The rule lives in `customers.capacity`."""
        return capacity_rule.percent_used(self)


@dataclass
class ConsumeResult:
    allowed: bool
    reason: str | None  # None | "limit_exceeded" | "no_access"
    entitlement: Entitlement
    replayed: bool = False


@dataclass
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)


# --- loading state ------------------------------------------------------------------------


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
        """An override in force at `at` beats the plan."""
        chosen = _override_in_force(self.overrides.get(feature_id, ()), at)
        return Terms.of("override", chosen) if chosen else self.plan_terms.get(feature_id)

    def terms_all(self, at: dt.datetime) -> dict[int, Terms]:
        terms = {}
        for feature_id in set(self.plan_terms) | set(self.overrides):
            chosen = self.terms_at(feature_id, at)
            if chosen is not None:
                terms[feature_id] = chosen
        return terms


def _states_load(customers: Iterable[Customer]) -> dict[int, CustomerState]:
    """Loads the state of several customers in three queries (subscriptions, plan terms,
    overrides), whatever their number."""
    customers = {c.pk: c for c in customers}
    if not customers:
        return {}
    subscriptions = {
        s.customer_id: s
        for s in Subscription.objects.filter(
            customer_id__in=customers, status=SubscriptionStatus.ACTIVE
        ).select_related("plan")
    }
    plan_terms: dict[int, dict[int, Terms]] = defaultdict(dict)
    plan_ids = {s.plan_id for s in subscriptions.values()}
    if plan_ids:
        for row in PlanEntitlement.objects.filter(plan_id__in=plan_ids):
            plan_terms[row.plan_id][row.feature_id] = Terms.of("plan", row)
    overrides: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for row in EntitlementOverride.objects.filter(customer_id__in=customers):
        overrides[row.customer_id][row.feature_id].append(row)
    states = {}
    for pk, customer in customers.items():
        subscription = subscriptions.get(pk)
        states[pk] = CustomerState(
            customer=customer,
            subscription=subscription,
            plan_terms=dict(plan_terms[subscription.plan_id]) if subscription else {},
            overrides=dict(overrides[pk]),
        )
    return states


def customer_state(customer: Customer) -> CustomerState:
    """The customer's state read afresh (three queries)."""
    return _states_load([customer])[customer.pk]


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


def caches_clear() -> None:
    """Forgets every cached state (tests between databases; never needed for correctness)."""
    for cache in (_states, _customer_ids, _catalog):
        cache.clear()
    snapshots.forget()


def _features(version: int | None = None) -> tuple[dict[str, Feature], dict[int, Feature]]:
    """Every feature by key and by id; reloaded (two queries) when `version` is newer than the
    cached copy, or when nothing is cached."""
    cached = _catalog_at(version)
    return cached[1], cached[2]


def _catalog_at(version: int | None) -> tuple:
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
    period (read now; `_counted` answers the cached copy)."""
    rows = CountedWindow.objects.order_by("feature_id", "window")
    if feature_ids is not None:
        rows = rows.filter(feature_id__in=list(feature_ids))
    counted: dict[int, tuple[str, ...]] = defaultdict(lambda: COUNTED_ALWAYS)
    for feature_id, kind in rows.values_list("feature_id", "window"):
        counted[feature_id] += (kind,)
    return dict(counted)


def _counted(feature_id: int, version: int | None) -> tuple[str, ...]:
    """The window kinds whose counters are kept for a feature, as of catalog `version` or any
    later one cached (kinds are only added: a writer whose lock then reads `version` keeps a
    kind too many at worst, never one too few). So a state cached before a catalog change
    does not reload the catalog that a newer state loaded."""
    cached = _catalog.get("features")
    if cached is None or (version is not None and cached[0] < version):
        cached = _catalog_at(version)
    return cached[3].get(feature_id, COUNTED_ALWAYS)


def _state_for(customer: Customer | int, version: tuple[int, int]) -> CustomerState:
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


def _customer_pk(customer: Customer | str) -> int:
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


def _override_in_force(overrides: Iterable[EntitlementOverride], at: dt.datetime):
    # Several may overlap; the most recently made one wins.
    active = [o for o in overrides if o.is_active_at(at)]
    return max(active, key=lambda o: (o.created_at, o.pk)) if active else None


def _terms_by_feature(
    state: CustomerState, at: dt.datetime, feature_ids: Iterable[int] | None = None
) -> dict[int, Terms]:
    """Terms per feature id at `at`: an override in force beats the plan."""
    terms = state.terms_all(at)
    if feature_ids is not None:
        terms = {f: t for f, t in terms.items() if f in set(feature_ids)}
    return terms


def _active_grants(grants: Iterable[Grant], feature_id: int, at: dt.datetime) -> list[Grant]:
    """Grants in force at `at`, in burn-down order: soonest-expiring first, never-expiring last."""
    active = [
        g
        for g in grants
        if g.feature_id == feature_id
        and g.effective_at <= at
        and (g.expires_at is None or at < g.expires_at)
        and (g.voided_at is None or at < g.voided_at)
    ]
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(active, key=lambda g: (g.expires_at or far, g.effective_at, g.pk or 0))


def _grants_query(customer_ids, feature_ids, since: dt.datetime, until: dt.datetime):
    return Grant.objects.filter(
        customer_id__in=customer_ids,
        feature_id__in=feature_ids,
        effective_at__lte=until,
    ).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=since),
        Q(voided_at__isnull=True) | Q(voided_at__gt=since),
    )


def _level(counters: dict[str, UsageCounter | None], kind: str) -> Decimal:
    """A `latest` feature's level: the last report in the window, else the last report ever
    (a level such as storage in use carries over into a new period until reported again)."""
    for candidate in (counters.get(kind), counters.get(Reset.NEVER)):
        if candidate is not None and candidate.level is not None:
            return candidate.level
    return ZERO


def _effective_kind(terms: Terms) -> str:
    return terms.reset


def _compute(
    feature: Feature,
    terms: Terms | None,
    counters: dict[str, UsageCounter | None],
    grants: list[Grant],
    windows: dict[str, Window],
) -> Entitlement:
    """Pure arithmetic of one effective entitlement from loaded rows (DESIGN.md)."""
    base = {
        "feature": feature.key,
        "name": feature.name,
        "kind": feature.kind,
        "unit": feature.unit,
        "feature_id": feature.pk,
        "aggregation": feature.aggregation if feature.kind == FeatureKind.METERED else None,
    }
    if terms is None and not (feature.kind == FeatureKind.METERED and grants):
        return Entitlement(has_access=False, **base)
    if feature.kind == FeatureKind.BOOLEAN:
        return Entitlement(
            has_access=terms.enabled,
            source=terms.source,
            show_on_invoice=terms.show_on_invoice,
            **base,
        )
    if feature.kind == FeatureKind.CONFIG:
        return Entitlement(
            has_access=True,
            value=terms.value,
            source=terms.source,
            show_on_invoice=terms.show_on_invoice,
            **base,
        )

    terms = terms or GRANT_ONLY_TERMS
    kind = _effective_kind(terms)
    window = windows[kind]
    counter = counters.get(kind)
    limit = None if terms.unlimited else (terms.limit or ZERO)
    if feature.aggregation == "latest":
        usage = _level(counters, kind)
        granted = sum((g.quantity for g in grants), ZERO)
        if limit is None:
            balance = overage = None
        else:
            capacity = limit + granted
            balance = max(ZERO, capacity - usage)
            overage = max(ZERO, usage - capacity)
    else:
        usage = counter.used if counter else ZERO
        drawn = counter.drawn if counter else ZERO
        granted = sum((g.quantity - g.consumed for g in grants), ZERO)
        if limit is None:
            balance = overage = None
        else:
            balance = max(ZERO, limit - usage) + granted
            overage = max(ZERO, usage - limit - drawn)
    has_access = limit is None or balance > 0 or terms.enforcement == Enforcement.SOFT
    resets = kind != Reset.NEVER
    return Entitlement(
        has_access=has_access,
        unlimited=limit is None,
        limit=limit,
        granted=granted,
        usage=usage,
        balance=balance,
        overage=ZERO if overage is None and limit is None else overage,
        enforcement=terms.enforcement,
        source=terms.source,
        period_start=window.start,
        period_end=window.end if resets else None,
        resets_at=window.end if resets else None,
        reset=kind,
        notify_at=terms.notify_at,
        show_on_invoice=terms.show_on_invoice,
        overage_price=terms.overage_price,
        **base,
    )


# --- reads --------------------------------------------------------------------------------


def feature_by_key(feature_key: str) -> Feature:
    """A feature by key from the cached catalog (a key never changes; a newly created feature
    is found by reloading). Raises NotFound."""
    feature = _features()[0].get(feature_key)
    if feature is None:
        feature = _features(version=-1)[0].get(feature_key)  # -1: reload now
    if feature is None:
        raise NotFound(f"No feature with key {feature_key!r}.", code="feature_not_found")
    return feature


def _now(at: dt.datetime | None) -> dt.datetime:
    return (at or timezone.now()).astimezone(dt.UTC)


def _usage_snapshot(customer_id: int, feature_id: int | None, at: dt.datetime) -> Snapshot:
    """One query: the customer's state version and the catalog's, the usage counters of every
    window containing `at`, the grants in force at `at` (of one feature, or all) and when the
    next grant comes into force. Raises NotFound when the customer does not exist."""
    quote = connection.ops.quote_name
    counter, grant = UsageCounter._meta.db_table, Grant._meta.db_table
    stamp = connection.ops.adapt_datetimefield_value(at)
    feature_filter = " AND feature_id = %s" if feature_id is not None else ""
    feature_param = [feature_id] if feature_id is not None else []
    sql = f"""
        SELECT 0, state_version, (SELECT version FROM {CatalogVersion._meta.db_table}
                                  WHERE id = 1), NULL, NULL, NULL, NULL, NULL, NULL, NULL
          FROM {Customer._meta.db_table} WHERE id = %s
        UNION ALL
        SELECT 1, id, feature_id, {quote("window")}, start, {quote("end")}, used, drawn, level,
               level_at
          FROM {counter} WHERE customer_id = %s{feature_filter} AND start <= %s
               AND {quote("end")} > %s
        UNION ALL
        SELECT 2, id, feature_id, NULL, effective_at, expires_at, quantity, consumed, NULL,
               voided_at
          FROM {grant} WHERE customer_id = %s{feature_filter} AND effective_at <= %s
               AND (expires_at IS NULL OR expires_at > %s)
               AND (voided_at IS NULL OR voided_at > %s)
        UNION ALL
        SELECT 3, NULL, NULL, NULL, MIN(effective_at), NULL, NULL, NULL, NULL, NULL
          FROM {grant} WHERE customer_id = %s{feature_filter} AND effective_at > %s
    """
    params = [customer_id, customer_id, *feature_param, stamp, stamp]
    params += [customer_id, *feature_param, stamp, stamp, stamp]
    params += [customer_id, *feature_param, stamp]
    version, counters, grants, next_grant_at = None, [], [], None
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    for kind, pk, feature, window, start, end, a, b, level, stamp_at in rows:
        if kind == 0:
            version = (int(pk), int(feature or 0))
        elif kind == 1:
            counters.append(
                CounterRow(
                    pk,
                    customer_id,
                    feature,
                    window,
                    _db_time(start),
                    _db_time(end),
                    _db_decimal(a),
                    _db_decimal(b),
                    None if level is None else _db_decimal(level),
                    _db_time(stamp_at),
                )  # fmt: skip
            )
        elif kind == 2:
            grants.append(
                GrantRow(
                    pk,
                    customer_id,
                    feature,
                    _db_time(start),
                    _db_time(end),
                    _db_decimal(a),
                    _db_decimal(b),
                    _db_time(stamp_at),
                )  # fmt: skip
            )
        else:
            next_grant_at = _db_time(start)
    if version is None:
        raise NotFound("No such customer.", code="customer_not_found")
    return Snapshot(version, counters, grants, next_grant_at)


def _snapshot_horizon(snapshot: Snapshot, state: CustomerState, at: dt.datetime) -> dt.datetime:
    """The first moment after `at` at which the snapshot could change by time alone."""
    moments = [w.end for k, w in state.windows(at).items() if k != Reset.NEVER]
    moments += [c.end for c in snapshot.counters]
    for g in snapshot.grants:
        moments += [t for t in (g.expires_at, g.voided_at) if t is not None]
    if snapshot.next_grant_at is not None:
        moments.append(snapshot.next_grant_at)
    return min(m for m in moments if m is not None and m > at)


FOUR_PLACES = Decimal("0.0001")


def _counter_from_row(row) -> CounterRow:
    """A counter from (id, customer, feature, window, start, end, used, drawn, level, level_at)
    as raw SQL answers them on either database."""
    pk, customer_id, feature_id, window, start, end, used, drawn, level, level_at = row
    return CounterRow(
        pk, customer_id, feature_id, window, _db_time(start), _db_time(end), _db_decimal(used),
        _db_decimal(drawn), None if level is None else _db_decimal(level), _db_time(level_at),
    )  # fmt: skip


def _db_decimal(value) -> Decimal:
    # PostgreSQL answers Decimals; SQLite answers ints, floats or strings.
    return value if isinstance(value, Decimal) else Decimal(str(value)).quantize(FOUR_PLACES)


def _db_time(value) -> dt.datetime | None:
    # PostgreSQL answers aware datetimes; SQLite naive ones (UTC) or strings.
    if value is None:
        return None
    stamp = value if isinstance(value, dt.datetime) else parse_datetime(str(value))
    return stamp.replace(tzinfo=dt.UTC) if timezone.is_naive(stamp) else stamp


def _window_counters(
    snapshot_counters: Iterable[UsageCounter], feature_id: int, windows: dict[str, Window]
) -> dict[str, UsageCounter]:
    """The counters of the windows in force, by window kind."""
    return {
        c.window: c
        for c in snapshot_counters
        if c.feature_id == feature_id and windows[c.window].start == c.start
    }


def _snapshot_and_state(
    customer: Customer | str, feature_id: int | None, at: dt.datetime
) -> tuple[Snapshot, CustomerState]:
    """The customer's usage snapshot at `at` and its state: from the Redis mirror when it is
    valid (no query), else read in one query (and mirrored, every feature at once)."""
    pk = _customer_pk(customer)
    # Only reads of the present use the mirror: a snapshot holds the windows in force when it
    # was read, and an invoice or report asking about a past moment needs that moment's.
    snapshot, ticket = None, None
    if at >= timezone.now() - snapshots.PRESENT:
        snapshot, ticket = snapshots.fetch(pk, at)
    if snapshot is None:
        wanted = None if ticket is not None else feature_id
        try:
            snapshot = _usage_snapshot(pk, wanted, at)
        except NotFound:
            if isinstance(customer, Customer):
                raise
            _customer_ids.discard(customer)  # deleted, or its external id now names another
            pk = _customer_pk(customer)
            snapshot, ticket = _usage_snapshot(pk, feature_id, at), None
    _features(snapshot.version[1])
    state = _state_for(customer if isinstance(customer, Customer) else pk, snapshot.version)
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
    at = _now(at)
    feature = feature_key if isinstance(feature_key, Feature) else feature_by_key(feature_key)
    snapshot, cached = _snapshot_and_state(customer, feature.pk, at)
    state = state or cached
    feature = _features(snapshot.version[1])[1].get(feature.pk)
    if feature is None:
        raise NotFound(f"No feature with key {feature_key!r}.", code="feature_not_found")
    terms = state.terms_at(feature.pk, at)
    if feature.kind != FeatureKind.METERED:
        return _compute(feature, terms, {}, [], {})
    windows = state.windows(at)
    counters = _window_counters(snapshot.counters, feature.pk, windows)
    grants = _active_grants(snapshot.grants, feature.pk, at)
    return _compute(feature, terms, counters, grants, windows)


def entitlements_resolve(
    customer: Customer | str, at: dt.datetime | None = None, *, with_state: bool = False
):
    """Every effective entitlement of a customer at `at`: features of the plan, of overrides in
    force and of active grants, ordered by feature name. One query when the customer's state is
    cached. With `with_state`, answers (state, entitlements)."""
    at = _now(at)
    snapshot, state = _snapshot_and_state(customer, None, at)
    by_id = _features(snapshot.version[1])[1]
    terms = state.terms_all(at)
    grants_by_feature = defaultdict(list)
    for g in snapshot.grants:
        grants_by_feature[g.feature_id].append(g)
    feature_ids = (set(terms) | set(grants_by_feature)) & set(by_id)
    windows = state.windows(at)
    entitlements = [
        _compute(
            feature,
            terms.get(feature.pk),
            _window_counters(snapshot.counters, feature.pk, windows),
            _active_grants(grants_by_feature[feature.pk], feature.pk, at),
            windows,
        )
        for feature in sorted((by_id[f] for f in feature_ids), key=lambda f: (f.name, f.pk))
    ]
    return (state, entitlements) if with_state else entitlements


# --- writes -------------------------------------------------------------------------------


def _refused(field: str, message: str) -> InvalidInput:
    """A 400 `invalid` naming the field, as a serializer's error would (DESIGN.md)."""
    return InvalidInput(f"{field}: {message}", details={field: [message]})


def _parse_quantity(value, *, allow_zero: bool) -> Decimal:
    """An exact quantity within bounds.DECIMAL_RULE: positive, or >= 0 with `allow_zero`."""
    try:
        return bounds.decimal_parse(value, positive=not allow_zero)
    except bounds.Refused as refused:
        raise _refused("quantity", f"This value {refused}.") from None


def _parse_timestamp(value, now: dt.datetime | None = None) -> dt.datetime:
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
            raise _refused("timestamp", "Use an ISO 8601 date and time, e.g. 2026-11-20T10:00:00Z.")
    if timezone.is_naive(stamp):
        stamp = stamp.replace(tzinfo=dt.UTC)
    try:
        return bounds.instant_check(stamp.astimezone(dt.UTC))
    except (bounds.Refused, OverflowError):
        raise _refused("timestamp", f"The date and time must be {bounds.INSTANT_RULE}.") from None


def _clean_properties(properties) -> dict:
    if properties is None:
        return {}
    if not isinstance(properties, dict):
        raise _refused("properties", "properties must be an object.")
    if bounds.text_unstorable(properties):
        raise _refused("properties", "Text in properties cannot contain NUL characters.")
    return properties


def _lock_counters(
    keys: dict[tuple, Window], *, version_of: int | None = None
) -> tuple[dict[tuple, UsageCounter], tuple[int, int] | None]:
    """Locks the counter rows of `keys` in one fixed order (customer, feature, window, start),
    so that writers never deadlock, creating the missing ones first. With `version_of` (a
    customer id), also answers that customer's state version and the catalog's, read in the
    same query (None when the customer does not exist)."""
    ordered = sorted(keys)
    locked, version = _select_counters_for_update(ordered, version_of)
    missing = [key for key in ordered if key not in locked]
    if missing:
        _create_counters(missing, keys)
        locked, version = _select_counters_for_update(ordered, version_of)
    return locked, version


def _select_counters_for_update(ordered: list[tuple], version_of: int | None):
    """SELECT .. FOR UPDATE of the counters of `ordered` keys, matched as row values against a
    VALUES list (one statement per LOCK_CHUNK keys, in the same order as the whole)."""
    quote = connection.ops.quote_name
    table = quote(UsageCounter._meta.db_table)
    window, end = quote("window"), quote("end")
    versions = "NULL, NULL"
    version_params: list = []
    if version_of is not None:
        versions = (
            f"(SELECT state_version FROM {quote(Customer._meta.db_table)} WHERE id = %s), "
            f"(SELECT version FROM {quote(CatalogVersion._meta.db_table)} WHERE id = 1)"
        )
        version_params = [version_of]
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    locked, version = {}, None
    with connection.cursor() as cursor:
        for offset in range(0, len(ordered), LOCK_CHUNK):
            chunk = ordered[offset : offset + LOCK_CHUNK]
            params = list(version_params)
            if connection.vendor == "postgresql":
                chunk_version = _lock_chunk_pg(cursor, chunk, versions, version_params, locked)
                version = version or chunk_version
                continue
            for customer_id, feature_id, kind, start in chunk:
                params += [customer_id, feature_id, str(kind), _db_param_time(start)]
            keys = "VALUES " + ", ".join(["(%s, %s, %s, %s)"] * len(chunk))
            cursor.execute(
                f"SELECT id, customer_id, feature_id, {window}, start, {end}, used, drawn, level, "
                f"level_at, {versions} FROM {table} "
                f"WHERE (customer_id, feature_id, {window}, start) IN ({keys}) "
                f"ORDER BY customer_id, feature_id, {window}, start{lock}",
                params,
            )
            for row in cursor.fetchall():
                counter = _counter_from_row(row[:10])
                counter.loaded = _counter_values(counter)
                key = (counter.customer_id, counter.feature_id, counter.window, counter.start)
                locked[key] = counter
                if version_of is not None and version is None and row[10] is not None:
                    version = (int(row[10]), int(row[11] or 0))
    return locked, version


def _lock_chunk_pg(cursor, chunk: list[tuple], versions: str, params: list, locked: dict):
    """PostgreSQL: the keys go as four arrays (whatever their number, no giant statement) and
    come back as their ordinal, so that no timestamp is parsed back. Answers the versions."""
    version = None
    cursor.execute(
        "SELECT c.id, k.n, c.used, c.drawn, c.level, c.level_at, " + versions + " "
        "FROM unnest(%s::bigint[], %s::bigint[], %s::varchar[], %s::timestamptz[]) "
        "WITH ORDINALITY AS k(customer_id, feature_id, win, start, n) "
        "JOIN customers_usagecounter c ON c.customer_id = k.customer_id "
        'AND c.feature_id = k.feature_id AND c."window" = k.win AND c.start = k.start '
        'ORDER BY c.customer_id, c.feature_id, c."window", c.start FOR UPDATE OF c',
        [*params, *(pg_array(column) for column in zip(*chunk, strict=True))],
    )
    for pk, n, used, drawn, level, level_at, *version in cursor.fetchall():
        customer_id, feature_id, kind, start = key = chunk[n - 1]
        counter = CounterRow(pk, customer_id, feature_id, kind, start, None, used, drawn, level,
                             level_at)  # fmt: skip
        counter.loaded = _counter_values(counter)
        locked[key] = counter
        if version[0] is not None:
            version = (int(version[0]), int(version[1] or 0))
    return version


def pg_array(values) -> str:
    """A PostgreSQL array literal of numbers, timestamps, None and plain words (never user
    text): built in one join, where psycopg's array dumper costs milliseconds per thousand."""
    values = list(values)
    if isinstance(next((v for v in values if v is not None), None), dt.datetime):
        # Few distinct instants (windows' starts are shared): each is formatted once.
        texts = {v: "NULL" if v is None else v.isoformat() for v in set(values)}
        return "{" + ",".join([texts[v] for v in values]) + "}"
    if any(v is None for v in values):
        return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"
    return "{" + ",".join(map(str, values)) + "}"


def pg_text_array(values) -> str:
    """A PostgreSQL array literal of any text (clients' event ids and external ids): every
    element double-quoted, its backslashes and double quotes escaped, so that commas, braces,
    spaces and the word NULL stay text. Sent as a parameter like the others."""
    quoted = ['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
    return "{" + ",".join(quoted) + "}"


def _db_param_time(value: dt.datetime):
    return connection.ops.adapt_datetimefield_value(value)


@dataclass
class _Draw:
    """The effect one usage quantity would have: what to add where. Applied only if allowed."""

    allowed: bool
    reason: str | None
    quantity: Decimal
    level: Decimal | None = None
    takes: list[tuple[Grant, Decimal]] = field(default_factory=list)


def _plan_draw(
    feature: Feature,
    terms: Terms | None,
    counters: dict[str, UsageCounter],
    grants: list[Grant],
    quantity: Decimal,
    *,
    enforce: bool,
    as_level: bool,
) -> _Draw:
    """Burn-down of `quantity` against allowance, then grants soonest-expiring first. With
    `enforce` (a consume), a hard limit denies what the balance cannot cover. `as_level`: the
    quantity is a reported level of a `latest` feature rather than an increment."""
    if terms is None and not grants:
        if enforce:
            return _Draw(False, "no_access", quantity)
        terms = GRANT_ONLY_TERMS  # reported usage without access is still recorded
    terms = terms or GRANT_ONLY_TERMS
    kind = _effective_kind(terms)
    hard = enforce and terms.enforcement == Enforcement.HARD and not terms.unlimited
    if feature.aggregation == "latest":
        level = quantity if as_level else _level(counters, kind) + quantity
        capacity = (terms.limit or ZERO) + sum((g.quantity for g in grants), ZERO)
        if hard and level > capacity:
            return _Draw(False, "limit_exceeded", quantity, level=level)
        return _Draw(True, None, quantity, level=level)
    if terms.unlimited:
        return _Draw(True, None, quantity)
    used = counters[kind].used
    rest = quantity - min(quantity, max(ZERO, (terms.limit or ZERO) - used))
    takes = []
    for grant in grants:
        if rest <= 0:
            break
        take = min(rest, grant.quantity - grant.consumed)
        if take > 0:
            takes.append((grant, take))
            rest -= take
    if hard and rest > 0:
        return _Draw(False, "limit_exceeded", quantity)
    return _Draw(True, None, quantity, takes=takes)


def _apply_draw(
    draw: _Draw, terms: Terms | None, counters: dict[str, UsageCounter], at: dt.datetime
) -> None:
    # `used` is the sum of the ledger's quantities, and a `latest` event records the level.
    recorded = draw.level if draw.level is not None else draw.quantity
    for counter in counters.values():
        counter.used += recorded
        if draw.level is not None and (counter.level_at is None or at >= counter.level_at):
            counter.level, counter.level_at = draw.level, at
    drawn = sum((take for _, take in draw.takes), ZERO)
    if drawn:
        counters[_effective_kind(terms or GRANT_ONLY_TERMS)].drawn += drawn
    for grant, take in draw.takes:
        grant.consumed += take


COUNTER_VALUES = ("used", "drawn", "level", "level_at")


def _counter_values(counter: CounterRow) -> tuple:
    return (counter.used, counter.drawn, counter.level, counter.level_at)


def _save_counters_and_grants(counters: Iterable[UsageCounter], grants: Iterable[Grant]) -> None:
    """Writes back the locked counters and grants that changed: the counters in one
    executemany (bulk_update's CASE expressions cost seconds for a batch of thousands)."""
    counters = [c for c in counters if _counter_values(c) != c.loaded]
    if counters and connection.vendor == "postgresql":
        _update_counters_from_values(counters)
    elif counters:
        fields = [UsageCounter._meta.get_field(name) for name in COUNTER_VALUES]
        quote = connection.ops.quote_name
        assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
        with connection.cursor() as cursor:
            cursor.executemany(
                f"UPDATE {quote(UsageCounter._meta.db_table)} SET {assignments} "
                f"WHERE {quote(UsageCounter._meta.pk.column)} = %s",
                [
                    [f.get_db_prep_save(getattr(c, f.attname), connection) for f in fields] + [c.pk]
                    for c in counters
                ],
            )
    grants = [g for g in grants if g.consumed != g.loaded]
    if grants:
        Grant.objects.bulk_update(
            [Grant(pk=g.pk, consumed=g.consumed) for g in grants], ["consumed"]
        )


# PostgreSQL: the counters' new values as five arrays (id, used, drawn, level, level_at).
_COUNTERS_FROM_VALUES = """
    UPDATE customers_usagecounter AS c
       SET used = v.used, drawn = v.drawn, level = v.level, level_at = v.level_at
      FROM unnest(%s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[],
                  %s::timestamptz[]) AS v(id, used, drawn, level, level_at)
     WHERE c.id = v.id"""


def _counter_columns(counters: list) -> list[str]:
    """The five array parameters of `_COUNTERS_FROM_VALUES`."""
    rows = [(c.pk, c.used, c.drawn, c.level, c.level_at) for c in counters]
    return [pg_array(column) for column in zip(*rows, strict=True)]


def _update_counters_from_values(counters: list[UsageCounter]) -> None:
    """PostgreSQL: one UPDATE .. FROM unnest(arrays) for all the changed counters; only
    `used` when nothing else changed (a batch of sums without grants)."""
    with connection.cursor() as cursor:
        if all(c.loaded[1:] == (c.drawn, c.level, c.level_at) for c in counters):
            cursor.execute(
                "UPDATE customers_usagecounter AS c SET used = v.used "
                "FROM unnest(%s::bigint[], %s::numeric[]) AS v(id, used) WHERE c.id = v.id",
                [
                    "{" + ",".join([str(c.pk) for c in counters]) + "}",
                    "{" + ",".join([str(c.used) for c in counters]) + "}",
                ],
            )
        else:
            cursor.execute(_COUNTERS_FROM_VALUES, _counter_columns(counters))


GRANT_ROW = ("pk", "customer_id", "feature_id", "effective_at", "expires_at", "quantity",
             "consumed", "voided_at")  # fmt: skip


# PostgreSQL: the grants of these customers and features that may be in force between two
# moments (`_grants_query`'s filter), for the batch's look at grants and its lock alike.
_GRANTS_BETWEEN = (
    "WHERE customer_id = ANY(%s::bigint[]) AND feature_id = ANY(%s::bigint[]) "
    "AND effective_at <= %s AND (expires_at IS NULL OR expires_at > %s) "
    "AND (voided_at IS NULL OR voided_at > %s)"
)


def _grants_between(customer_ids, feature_ids, since: dt.datetime, until: dt.datetime) -> list:
    return [pg_array(customer_ids), pg_array(feature_ids), until, since, since]


def _lock_grants(customer_ids, feature_ids, since: dt.datetime, until: dt.datetime) -> list:
    """Locks, in id order, the grants of these customers and features that may be in force
    between `since` and `until`, read as light rows that remember what they were locked at."""
    if connection.vendor == "postgresql":
        # Arrays rather than IN lists: a batch names up to a thousand customers.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, customer_id, feature_id, effective_at, expires_at, quantity, "
                f"consumed, voided_at FROM customers_grant {_GRANTS_BETWEEN} "
                "ORDER BY id FOR UPDATE",
                _grants_between(customer_ids, feature_ids, since, until),
            )
            rows = cursor.fetchall()
    else:
        rows = (
            _grants_query(customer_ids, feature_ids, since, until)
            .select_for_update()
            .order_by("pk")
            .values_list(*GRANT_ROW)
        )
    grants = [GrantRow(*row) for row in rows]
    for g in grants:
        g.loaded = g.consumed
    return grants


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
    if feature.kind != FeatureKind.METERED:
        raise InvalidInput(
            f"{feature.key!r} is a {feature.kind} feature; only metered features are consumed.",
            code="not_metered",
        )
    quantity = _parse_quantity(quantity, allow_zero=False)
    event_id = _clean_event_id(event_id)
    at = _parse_timestamp(timestamp)
    properties = _clean_properties(properties)
    if dry_run:
        snapshot, state = _snapshot_and_state(customer, feature.pk, at)
        terms = state.terms_at(feature.pk, at)
        windows = state.windows(at)
        counters = _window_counters(snapshot.counters, feature.pk, windows)
        for kind, window in windows.items():
            counters.setdefault(kind, UsageCounter(start=window.start, end=window.end))
        grants = _active_grants(snapshot.grants, feature.pk, at)
        draw = _plan_draw(feature, terms, counters, grants, quantity, enforce=True, as_level=False)
        if draw.allowed:
            _apply_draw(draw, terms, counters, at)
        return _consume_result(draw, _compute(feature, terms, counters, grants, windows))
    pk = _customer_pk(customer)
    with snapshots.write_guard([pk]):
        # A batch inserts its events before it locks counters: one reusing this event_id at
        # this very instant may deadlock with this consume, whichever PostgreSQL aborts retries.
        return _retrying_deadlocks(
            lambda: _consume(customer, pk, feature, quantity, event_id, at, properties)
        )


def _consume(customer, pk, feature, quantity, event_id, at, properties) -> ConsumeResult:
    # Unheard by Redis, the write records its debt in its transaction: the ordinary path.
    if connection.vendor == "postgresql" and not connection.in_atomic_block and snapshots.heard():
        fast = _consume_two_trips(pk, feature, quantity, event_id, at, properties)
        if fast is not None:
            return fast
    return _consume_in_transaction(customer, pk, feature, quantity, event_id, at, properties)


def _consume_in_transaction(customer, pk, feature, quantity, event_id, at, properties):
    with transaction.atomic():
        state = _states.get(pk)
        if state is None:
            state = customer_state(customer if isinstance(customer, Customer) else _customer(pk))
        keys = _consume_keys(state, pk, feature, at)
        locked, version = _lock_counters(keys, version_of=pk)
        if version is None:
            _customer_ids.discard(customer)
            raise NotFound("No such customer.", code="customer_not_found")
        if state.version != version:
            # The cached state is out of date (or new): reload it; its windows may differ.
            _features(version[1])
            state = _state_for(state.customer, version)
            keys = _consume_keys(state, pk, feature, at)
            if set(keys) - set(locked):
                locked.update(_lock_counters(keys)[0])
        windows = state.windows(at)
        terms = state.terms_at(feature.pk, at)
        counters = {key[2]: locked[key] for key in keys}
        grants = _active_grants(_lock_grants([pk], [feature.pk], at, at), feature.pk, at)
        draw = _plan_draw(feature, terms, counters, grants, quantity, enforce=True, as_level=False)
        if not draw.allowed:
            # A replay of an allowed request answers its first outcome even if now denied.
            replay = _replay(state.customer, feature, quantity, event_id, at, state)
            return replay or _consume_result(
                draw, _compute(feature, terms, counters, grants, windows)
            )
        item = {
            "customer": state.customer,
            "feature": feature,
            "event_id": event_id,
            "quantity": draw.level if draw.level is not None else quantity,
            "timestamp": at,
            "properties": properties or {},
        }
        if not _insert_events_returning([item]):
            # Already recorded (the counters were locked, so the first has committed).
            return _replay(state.customer, feature, quantity, event_id, at, state)
        before = _compute(feature, terms, counters, grants, windows)
        _apply_draw(draw, terms, counters, at)
        _save_counters_and_grants(counters.values(), grants)
        snapshots.record_unheard_write()
        after = _compute(feature, terms, counters, grants, windows)
        _after_usage(state, feature, before, after)
        return ConsumeResult(True, None, after)


_CONSUME_LOCK = """
    BEGIN; SET LOCAL synchronous_commit = %s;
    WITH c AS (
        SELECT id, customer_id, feature_id, "window", start, "end", used, drawn, level, level_at
          FROM customers_usagecounter
         WHERE customer_id = %s AND feature_id = %s AND start <= %s AND "end" > %s
         ORDER BY customer_id, feature_id, "window", start FOR UPDATE
    ), g AS (
        SELECT id, effective_at, expires_at, quantity, consumed, voided_at
          FROM customers_grant
         WHERE customer_id = %s AND feature_id = %s AND effective_at <= %s
               AND (expires_at IS NULL OR expires_at > %s) AND (voided_at IS NULL OR voided_at > %s)
         ORDER BY id FOR UPDATE
    )
    SELECT 0, NULL::bigint, NULL::varchar, NULL::timestamptz, NULL::timestamptz, NULL::numeric,
           NULL::numeric, NULL::numeric, NULL::timestamptz,
           (SELECT state_version FROM customers_customer WHERE id = %s),
           (SELECT version FROM catalog_catalogversion WHERE id = 1)
    UNION ALL
    SELECT 1, id, "window", start, "end", used, drawn, level, level_at, NULL, NULL FROM c
    UNION ALL
    SELECT 2, id, NULL, effective_at, expires_at, quantity, consumed, NULL, voided_at, NULL, NULL
      FROM g
"""
_CONSUME_WRITE = f"""
    WITH ev AS (
        INSERT INTO customers_usageevent
               (customer_id, feature_id, event_id, quantity, "timestamp", properties, recorded_at)
        VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s)
        ON CONFLICT (customer_id, event_id) DO NOTHING RETURNING id
    ), counters AS ({_COUNTERS_FROM_VALUES} AND EXISTS (SELECT 1 FROM ev)
    ), grants AS (
        UPDATE customers_grant AS g SET consumed = v.consumed
          FROM unnest(%s::bigint[], %s::numeric[]) AS v(id, consumed)
         WHERE g.id = v.id AND EXISTS (SELECT 1 FROM ev)
    )
    SELECT id FROM ev;
    COMMIT
"""


def _consume_two_trips(pk, feature, quantity, event_id, at, properties) -> ConsumeResult | None:
    """The consume on PostgreSQL outside any transaction, in two round trips: BEGIN and the
    locks (counters, then grants, with the versions), then the event, the counters, the grants
    and COMMIT in one statement that writes nothing if the event_id is already recorded. The
    same decisions as `_consume_in_transaction`, by the same functions. Answers None, having
    written nothing, when the ordinary path must do it: the customer's state not cached or out
    of date, a window's counter to create, a threshold crossed (its notification)."""
    state = _states.get(pk)
    if state is None or state.version is None:
        return None
    windows = state.windows(at)
    counted = _counted(feature.pk, state.version[1])  # before any lock is held
    # The counters of every window containing `at` (the index on open windows): those of the
    # windows in force among them, or the ordinary path creates the missing ones.
    commit = "on" if getattr(settings, "USAGE_SYNCHRONOUS_COMMIT", True) else "off"
    params = [commit, pk, feature.pk, at, at, pk, feature.pk, at, at, at, pk]
    with connection.cursor() as cursor:
        try:
            cursor.execute(_CONSUME_LOCK, params)
            cursor.nextset()  # past BEGIN's
            cursor.nextset()  # past SET's
            rows = cursor.fetchall()
            version, counters, grants = None, {}, []
            for kind, rid, window, t1, t2, n1, n2, n3, t3, v1, v2 in rows:
                if kind == 0:
                    version = None if v1 is None else (int(v1), int(v2 or 0))
                elif kind == 1:
                    if window in counted and windows[window].start == t1:
                        counters[window] = CounterRow(
                            rid, pk, feature.pk, window, t1, t2, n1, n2, n3, t3
                        )  # fmt: skip
                else:
                    grants.append(GrantRow(rid, pk, feature.pk, t1, t2, n1, n2, t3))
            if version != state.version or len(counters) != len(counted):
                cursor.execute("ROLLBACK")
                return None
            terms = state.terms_at(feature.pk, at)
            grants = _active_grants(grants, feature.pk, at)
            draw = _plan_draw(
                feature, terms, counters, grants, quantity, enforce=True, as_level=False
            )
            before = _compute(feature, terms, counters, grants, windows)
            if not draw.allowed:
                cursor.execute("ROLLBACK")
                replay = _replay(state.customer, feature, quantity, event_id, at, state)
                return replay or _consume_result(draw, before)
            loaded = {g.pk: g.consumed for g in grants}
            _apply_draw(draw, terms, counters, at)
            after = _compute(feature, terms, counters, grants, windows)
            if notifications_crossed(before, after):
                cursor.execute("ROLLBACK")
                return None
            changed = [g for g in grants if g.consumed != loaded[g.pk]]
            recorded = draw.level if draw.level is not None else quantity
            cursor.execute(
                _CONSUME_WRITE,
                [
                    pk, feature.pk, event_id, recorded, at,
                    orjson.dumps(properties or {}).decode(), timezone.now(),
                    *_counter_columns(list(counters.values())),
                    [g.pk for g in changed], [g.consumed for g in changed],
                ],
            )  # fmt: skip
            inserted = cursor.fetchall()
        except BaseException:
            _rollback_quietly(cursor)
            raise
    if not inserted:
        # Already recorded (the counters were locked, so the first has committed).
        return _replay(state.customer, feature, quantity, event_id, at, state)
    return ConsumeResult(True, None, after)


def _rollback_quietly(cursor) -> None:
    # Nothing to roll back if the connection is gone.
    with contextlib.suppress(Exception):
        cursor.execute("ROLLBACK")


def notifications_crossed(before: Entitlement, after: Entitlement) -> bool:
    from . import notifications

    return bool(notifications.thresholds_crossed(before, after))


def _customer(pk: int) -> Customer:
    customer = Customer.objects.filter(pk=pk).first()
    if customer is None:
        raise NotFound("No such customer.", code="customer_not_found")
    return customer


def _consume_keys(state: CustomerState, pk: int, feature: Feature, at) -> dict[tuple, Window]:
    """The counters a consume keeps: the feature's counted windows (as of the state's catalog
    version: once locked, the version read with them says whether that is still so)."""
    windows = state.windows(at)
    counted = _counted(feature.pk, state.version[1] if state.version else None)
    return {(pk, feature.pk, k, windows[k].start): windows[k] for k in counted}


def _consume_result(draw: _Draw, entitlement: Entitlement) -> ConsumeResult:
    if draw.reason == "no_access":
        entitlement = replace(entitlement, has_access=False)
    return ConsumeResult(draw.allowed, draw.reason, entitlement)


def _clean_event_id(event_id) -> str:
    if not isinstance(event_id, str) or not event_id.strip():
        raise _refused("event_id", "event_id is required: a non-empty string.")
    if len(event_id) > 255:
        raise _refused("event_id", "event_id is at most 255 characters.")
    if bounds.text_unstorable(event_id):
        raise _refused("event_id", "event_id cannot contain NUL characters.")
    return event_id


def _replay(customer, feature, quantity, event_id, at, state) -> ConsumeResult | None:
    """The first outcome of an event_id already recorded, or None if it is new."""
    event = (
        UsageEvent.objects.filter(customer=customer, event_id=event_id)
        .only("feature_id", "quantity")
        .first()
    )
    if event is None:
        return None
    if event.feature_id != feature.pk or (
        feature.aggregation == "sum" and event.quantity != quantity
    ):
        raise Conflict(
            f"event_id {event_id!r} was already used for another request.",
            code="idempotency_conflict",
            details={"event_id": event_id},
        )
    return ConsumeResult(True, None, entitlement_check(customer, feature, at, state=state), True)


def _may_cross(terms: Terms | None, counters: dict, quantity: Decimal) -> bool:
    """Whether adding `quantity` to a sum without grants may cross a `notify_at` threshold:
    `percent_used` before and after, by the same arithmetic (capacity is the larger of usage
    and limit). True whenever unsure (no terms, no positive limit), so the caller then takes
    the full path."""
    if terms is None:
        return True
    if terms.unlimited or not terms.notify_at:
        return False
    limit = terms.limit or ZERO
    if limit <= 0:
        return True
    before = counters[_effective_kind(terms)].used
    after = before + quantity
    low = before * 100 / max(before, limit)
    high = after * 100 / max(after, limit)
    return any(low < Decimal(t) <= high for t in terms.notify_at)


def _after_usage(state: CustomerState, feature: Feature, before, after) -> None:
    """Hook for what follows recorded usage in the same transaction (threshold notifications
    are written here by the notifications module)."""
    from . import notifications

    notifications.thresholds_record(
        customer=state.customer, feature=feature, before=before, after=after
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
    features = _features(catalog_version)[0]
    seen: set[tuple[int, str]] = set()
    now = timezone.now()  # the time of events sent without one
    for index, raw in enumerate(events):
        try:
            item = _parse_batch_event(raw, customers, features, now)
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
        result.accepted = _retrying_deadlocks(lambda: _record_batch_once(parsed))
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
    the victim is run again (`_retrying_deadlocks`), finding the other's event recorded.

    On PostgreSQL (`adding`), the sums without grants are added to their counters by the very
    statement that locks the counters: the arithmetic that follows then only checks them for
    thresholds, and writes back the other counters. Should a grant have come into being
    meanwhile for one of them, the transaction is run again without adding.

    `counted`: the window kinds kept per feature (default: the catalog's as the customers were
    read). Checked once the counters are locked, since a kind that came into use meanwhile
    must be counted too: the transaction is then run again with the kinds now counted."""
    pg = connection.vendor == "postgresql"
    outermost = not connection.in_atomic_block  # else the caller's checks stay as they are
    with transaction.atomic():
        if pg and outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        inserted = _insert_events_returning(parsed)
        fresh = []
        for i in parsed:
            pk = inserted.get((i["customer"].pk, i["event_id"]))
            if pk is not None:
                fresh.append({**i, "pk": pk})
        if not fresh:
            return 0
        states = _states_current({i["customer"].pk: i["customer"] for i in fresh}.values())
        customer_ids = {i["customer"].pk for i in fresh}
        feature_ids = {i["feature"].pk for i in fresh}
        stamps = [i["timestamp"] for i in fresh]
        since, until = min(stamps), max(stamps)
        granted = _granted(customer_ids, feature_ids, since, until) if pg and adding else None
        if counted is None:
            version = fresh[0]["customer"].catalog_version
            counted = {f: _counted(f, version) for f in feature_ids}
        keys: dict[tuple, Window] = {}
        adds: dict[tuple, Decimal] = {}
        wanted: set[tuple] = set()  # the counters the arithmetic reads
        for i in fresh:
            customer_id, feature_id = i["customer"].pk, i["feature"].pk
            state = states[customer_id]
            i["windows"] = windows = state.windows(i["timestamp"])
            i["kinds"] = kinds = counted[feature_id]
            adding_to = (
                granted is not None
                and i["feature"].aggregation == "sum"
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
                kind = _effective_kind(terms or GRANT_ONLY_TERMS)
                wanted.add((customer_id, feature_id, kind, windows[kind].start))
        if pg and _turns():
            _take_turns(customer_ids)
        locked = _lock_and_add(keys, adds, wanted) if adds else _lock_counters(keys)[0]
        # With the counters locked, a kind coming into use waits for this transaction (its
        # table lock) or has committed: read now, the counted kinds are final.
        now_counted = counted_windows(feature_ids)
        if any(now_counted.get(f, COUNTED_ALWAYS) != counted[f] for f in feature_ids):
            raise _CountedChanged({f: now_counted.get(f, COUNTED_ALWAYS) for f in feature_ids})
        grants = _lock_grants(customer_ids, feature_ids, since, until)
        if adds and any((g.customer_id, g.feature_id) not in granted for g in grants):
            raise _GrantAppeared
        _record_reported(fresh, states, locked, grants, adds)
        snapshots.record_unheard_write()
        return len(fresh)


_TURNS_CLASS = 0x75736167  # the advisory locks' first key: "usag"


def _turns() -> int:
    """The buckets of customers that batches take turns on (`USAGE_BATCH_TURNS`, 0: none)."""
    return getattr(settings, "USAGE_BATCH_TURNS", 64)


def _take_turns(customer_ids: set[int]) -> None:
    """Waits until no other batch is writing counters of customers in the same buckets (an
    advisory lock per bucket, taken in order, until commit). Not for correctness (the row
    locks are), but for cost: a batch that waited on rows locked by another batch would then
    re-read each of its thousands of counters as changed after its snapshot (PostgreSQL's
    re-check of updated rows), doubling PostgreSQL's work; waiting before the locking
    statement instead makes it start after the other's commit. Consumes, one counter row at a
    time, do not take turns. The price: two large batches whose customers differ but share
    buckets (a thousand customers cover all 64) also take turns."""
    buckets = sorted({pk % _turns() for pk in customer_ids})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, b) FROM unnest(%s::int[]) AS b",
            [_TURNS_CLASS, pg_array(buckets)],
        )


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


def _granted(customer_ids, feature_ids, since, until) -> set[tuple[int, int]]:
    """(customer, feature) pairs with a grant that may be in force between `since` and
    `until`, read without locking (the lock that follows the counters' checks it again)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT customer_id, feature_id FROM customers_grant {_GRANTS_BETWEEN}",
            _grants_between(customer_ids, feature_ids, since, until),
        )
        return set(cursor.fetchall())


# PostgreSQL: locks counters in key order and adds to some of them in the same statement (the
# keys, what to add and whether to answer the counter as seven arrays; add NULL: nothing). The
# keys come sorted, and each is looked up and locked in turn (a lateral index lookup): the
# order of the locks whatever the plan, and no scan of the table however large it grows.
# Answers the wanted counters as they were before, and a last row with how many it locked and,
# should some be missing, which.
_LOCK_AND_ADD = """
    WITH k AS (
        SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::varchar[], %s::timestamptz[],
                             %s::numeric[], %s::boolean[])
               WITH ORDINALITY AS k(customer_id, feature_id, win, start, add, want, n)
    ), l AS MATERIALIZED (
        SELECT c.id, k.n, k.add, k.want, c.used, c.drawn, c.level, c.level_at
          FROM k CROSS JOIN LATERAL (
                SELECT * FROM customers_usagecounter c WHERE c.customer_id = k.customer_id
                   AND c.feature_id = k.feature_id AND c."window" = k.win AND c.start = k.start
                   FOR UPDATE
               ) c
    ), a AS (
        UPDATE customers_usagecounter c SET used = c.used + l.add
          FROM l WHERE c.id = l.id AND l.add IS NOT NULL
    )
    SELECT id, n, used, drawn, level, level_at, NULL::bigint[] FROM l WHERE want
    UNION ALL
    SELECT NULL, count(*), NULL, NULL, NULL, NULL,
           CASE WHEN count(*) < %s THEN array_agg(n) END FROM l"""


def _create_counters(missing: list[tuple], keys: dict[tuple, Window]) -> None:
    """Creates the counters of `missing` keys at zero, skipping any created meanwhile."""
    UsageCounter.objects.bulk_create(
        [
            UsageCounter(customer_id=c, feature_id=f, window=k, start=s, end=keys[(c, f, k, s)].end)
            for c, f, k, s in missing
        ],
        ignore_conflicts=True,
    )


def _lock_and_add(keys: dict[tuple, Window], adds: dict[tuple, Decimal], wanted: set) -> dict:
    """PostgreSQL: `_lock_counters` that also adds `adds` to their counters and answers only
    the `wanted` ones, creating the missing counters (then locked and added to in a second
    statement)."""
    ordered = sorted(keys)
    locked, missing = _lock_and_add_pg(ordered, adds, wanted)
    if missing:
        _create_counters(missing, keys)
        locked.update(_lock_and_add_pg(missing, adds, wanted)[0])
    return locked


def _lock_and_add_pg(ordered: list[tuple], adds: dict, wanted: set) -> tuple[dict, list]:
    """One `_LOCK_AND_ADD`: the wanted counters by key, and the keys it found no counter for."""
    columns = [pg_array(column) for column in zip(*ordered, strict=True)]
    columns.append("{" + ",".join([str(adds.get(key, "NULL")) for key in ordered]) + "}")
    columns.append("{" + ",".join(["t" if key in wanted else "f" for key in ordered]) + "}")
    locked = {}
    with connection.cursor() as cursor:
        # Nested loops only: the update finds each locked counter by its id, rather than by a
        # scan of the table, which the planner may prefer while the table is small.
        cursor.execute(
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
            f"{_LOCK_AND_ADD}; RESET enable_hashjoin; RESET enable_mergejoin",
            [*columns, len(ordered)],
        )
        cursor.nextset()  # past the SETs
        cursor.nextset()
        *rows, (_, count, _, _, _, _, found) = cursor.fetchall()
    for pk, n, used, drawn, level, level_at, _ in rows:
        customer_id, feature_id, kind, start = key = ordered[n - 1]
        counter = CounterRow(pk, customer_id, feature_id, kind, start, None, used, drawn, level,
                             level_at)  # fmt: skip
        counter.loaded = (used, drawn, level, level_at)
        locked[key] = counter
    if count == len(ordered):
        return locked, []
    found = set(found or ())
    return locked, [key for n, key in enumerate(ordered, 1) if n not in found]


def _retrying_deadlocks(attempt):
    """Runs `attempt`, a whole transaction, again (twice at most) when PostgreSQL aborted it
    as the victim of a deadlock. Inside an outer transaction there is nothing to retry."""
    for tries in (1, 2, 3):
        try:
            return attempt()
        except OperationalError as error:
            deadlock = getattr(error.__cause__, "sqlstate", None) == DEADLOCK_DETECTED
            if not deadlock or tries == 3 or connection.in_atomic_block:
                raise


@dataclass(frozen=True, slots=True)
class CustomerKey:
    """A customer as a batch looks it up: the id and the versions its cached state must have."""

    pk: int
    external_id: str
    state_version: int
    catalog_version: int


def _batch_customers(external_ids: set[str]) -> dict[str, CustomerKey]:
    """The customers of a batch by external id, with the catalog's version, in one query of
    plain values (no model instances: a batch names up to a thousand customers)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.id, c.external_id, c.state_version, "
                f"(SELECT version FROM {CatalogVersion._meta.db_table} WHERE id = 1) "
                f"FROM {Customer._meta.db_table} c WHERE c.external_id = ANY(%s::text[])",
                [pg_text_array(external_ids)],
            )
            rows = cursor.fetchall()
    else:
        rows = (
            Customer.objects.filter(external_id__in=external_ids)
            .annotate(
                catalog_version=Subquery(CatalogVersion.objects.filter(pk=1).values("version")[:1])
            )
            .values_list("pk", "external_id", "state_version", "catalog_version")
        )
    return {row[1]: CustomerKey(row[0], row[1], row[2], row[3] or 0) for row in rows}


def _states_current(customers: Iterable[CustomerKey]) -> dict[int, CustomerState]:
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
        for pk, state in _states_load(Customer.objects.filter(pk__in=stale)).items():
            state.version = (stale[pk].state_version, stale[pk].catalog_version)
            _states.put(pk, state)
            states[pk] = state
    return states


def _parse_batch_event(raw, customers, features, now: dt.datetime) -> dict:
    if not isinstance(raw, dict):
        raise InvalidInput("Each event is an object.", code="invalid_event")
    customer = customers.get(str(raw.get("customer")))
    if customer is None:
        raise NotFound(f"No customer {raw.get('customer')!r}.", code="customer_not_found")
    feature = features.get(str(raw.get("feature")))
    if feature is None:
        raise NotFound(f"No feature {raw.get('feature')!r}.", code="feature_not_found")
    if feature.kind != FeatureKind.METERED:
        raise InvalidInput(f"{feature.key!r} is not a metered feature.", code="not_metered")
    properties = _clean_properties(raw.get("properties"))
    return {
        "customer": customer,
        "feature": feature,
        "event_id": _clean_event_id(raw.get("event_id")),
        "quantity": _parse_quantity(raw.get("quantity"), allow_zero=True),
        "timestamp": _parse_timestamp(raw.get("timestamp"), now),
        "properties": properties,
    }


def _insert_events_returning(items: list[dict]) -> dict[tuple[int, str], int]:
    """INSERT .. ON CONFLICT DO NOTHING RETURNING: the (customer, event_id) pairs that this
    transaction recorded, with their ids. A pair another transaction recorded first is a
    duplicate, even when both arrive at once. Rows go in (customer, event_id) order so that two
    batches sharing event ids wait for each other instead of deadlocking."""
    fields = [UsageEvent._meta.get_field(n) for n in UsageEvent.EVENT_COLUMNS]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    table = connection.ops.quote_name(UsageEvent._meta.db_table)
    pk_column = connection.ops.quote_name(UsageEvent._meta.pk.column)
    now = timezone.now()
    items = sorted(items, key=lambda i: (i["customer"].pk, i["event_id"]))
    inserted: dict[tuple[int, str], int] = {}
    if connection.vendor == "postgresql":
        # Seven array parameters, whatever the number of events: no giant statement.
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT c, f, e, q, t, p::jsonb, r FROM "
                "unnest(%s::bigint[], %s::bigint[], %s::varchar[], %s::numeric[], "
                "%s::timestamptz[], %s::text[], %s::timestamptz[]) AS u(c, f, e, q, t, p, r) "
                "ON CONFLICT (customer_id, event_id) DO NOTHING "
                f"RETURNING customer_id, event_id, {pk_column}",
                [
                    pg_array(i["customer"].pk for i in items),
                    pg_array(i["feature"].pk for i in items),
                    pg_text_array(i["event_id"] for i in items),
                    pg_array(i["quantity"] for i in items),
                    pg_array(i["timestamp"] for i in items),
                    pg_text_array(orjson.dumps(i["properties"]).decode() for i in items),
                    pg_array([now] * len(items)),
                ],
            )
            return {(c, e): pk for c, e, pk in cursor.fetchall()}
    with connection.cursor() as cursor:
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            params = []
            for i in chunk:
                values = (
                    i["customer"].pk,
                    i["feature"].pk,
                    i["event_id"],
                    i["quantity"],
                    i["timestamp"],
                    i["properties"],
                    now,
                )
                params += [
                    f.get_db_prep_save(v, connection) for f, v in zip(fields, values, strict=True)
                ]
            row = "(" + ", ".join(["%s"] * len(fields)) + ")"
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * len(chunk))} "
                "ON CONFLICT (customer_id, event_id) DO NOTHING "
                f"RETURNING customer_id, event_id, {pk_column}",
                params,
            )
            inserted.update(((c, e), pk) for c, e, pk in cursor.fetchall())
    return inserted


def _record_reported(
    ours: list[dict],
    states: dict[int, CustomerState],
    locked: dict[tuple, UsageCounter],
    all_grants: list[Grant],
    added: dict[tuple, Decimal] | None = None,
) -> None:
    """Applies newly recorded events to the locked counters and grants, in ledger order
    (timestamp, then id) per customer and feature, each under the terms in force at its
    timestamp. `added`: what the locking statement already added to counters (as locked, they
    read without it): those are not written again."""
    groups: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for i in ours:
        groups[(i["customer"].pk, i["feature"].pk)].append(i)
    grants_by_key = defaultdict(list)
    for g in all_grants:
        grants_by_key[(g.customer_id, g.feature_id)].append(g)
    for (customer_id, feature_id), group in groups.items():
        state = states[customer_id]
        group.sort(key=lambda i: (i["timestamp"], i["pk"]))
        feature = group[0]["feature"]
        keyed = grants_by_key.get((customer_id, feature_id))
        # Without grants, a sum's usage draws nothing: it only adds to every counter.
        adds_only = feature.aggregation == "sum" and not keyed
        for i in group:
            if adds_only and "terms" in i:  # the locking statement added it to its counters
                _count_added(state, feature, i, locked)
                continue
            at = i["timestamp"]
            terms = state.terms_at(feature_id, at)
            counters = {
                kind: locked[(customer_id, feature_id, kind, i["windows"][kind].start)]
                for kind in i["kinds"]
            }
            if adds_only and not _may_cross(terms, counters, i["quantity"]):
                for counter in counters.values():
                    counter.used += i["quantity"]
                continue
            grants = _active_grants(keyed or (), feature_id, at)
            before = _compute(feature, terms, counters, grants, i["windows"])
            draw = _plan_draw(
                feature,
                terms,
                counters,
                grants,
                i["quantity"],
                enforce=False,
                as_level=feature.aggregation == "latest",
            )
            _apply_draw(draw, terms, counters, at)
            after = _compute(feature, terms, counters, grants, i["windows"])
            _after_usage(state, feature, before, after)
    for key, quantity in (added or {}).items():
        counter = locked.get(key)  # only the counters some event's arithmetic needs
        if counter is not None:  # the statement wrote it: nothing to write back
            counter.used = counter.loaded[0] + quantity
            counter.loaded = _counter_values(counter)
    _save_counters_and_grants(locked.values(), all_grants)


def _count_added(state: CustomerState, feature: Feature, i: dict, locked: dict) -> None:
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
    # No terms: no access, so no thresholds.
    crossing = terms is not None and _may_cross(terms, counters, quantity)
    before = _compute(feature, terms, counters, [], windows) if crossing else None
    for counter in counters.values():
        counter.used += quantity
    if crossing:
        _after_usage(state, feature, before, _compute(feature, terms, counters, [], windows))
