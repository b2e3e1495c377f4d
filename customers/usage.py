"""Usage counters recomputed from the ledger (`rebuild_usage_counters`).

The engine keeps one `UsageCounter` per customer, feature and reset window, updated in the same
transaction as each `UsageEvent`. This module recomputes them from the events alone, reports
every counter that drifted and fixes it. It is set-based: aggregate queries per chunk of
customers, never a Python loop over events, so it runs on millions of events.

Which window an event belongs to, for each kind (as the engine keys them):
- `day`, `week` (from Monday), `month`: the UTC calendar window of its timestamp;
- `never` and `billing_period`: from the subscription in force at its timestamp (started at or
  before it, not yet ended): `never` starts at the subscription's start, `billing_period` is the
  period of its anchor grid, or the stored current period when the timestamp falls in it. With
  no subscription in force, `never` starts at the epoch and `billing_period` is the calendar
  month. (An event recorded long after its timestamp under a later subscription was counted by
  the engine in that subscription's windows; the rebuild files it under the one in force at its
  timestamp.)

`used` is the sum of the window's quantities; `level`/`level_at` the quantity and timestamp of
its last event (by timestamp, then id) for `latest` features, empty for `sum` features.
Reversed events (`reversed_at`) count for nothing, as the reversal took them off the counters.
`drawn` (what the window's usage took from grants) is kept as it is: the engine keeps it in step
with the draw ledger (`UsageDraw`), a reversal included, and events recorded before that
ledger existed have no rows to recompute it from.

Only the counted windows are kept and checked (`CountedWindow`: the billing period of every
metered feature, and each other kind once something uses it). `counted_windows_ensure` makes a
kind counted: it recomputes that feature's counters of the kind here, under a table lock.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Max, Min, Sum
from django.db.models.functions import TruncDay, TruncMonth, TruncWeek
from django.utils.dateparse import parse_datetime

from catalog.models import Aggregation, Feature, FeatureKind, Reset
from catalog.services import catalog_version_bump

from . import snapshots
from .engine import COUNTED_ALWAYS, counted_windows
from .models import (
    SUBSCRIPTION_CURRENT,
    CountedWindow,
    Customer,
    Subscription,
    UsageCounter,
    UsageEvent,
)
from .periods import EPOCH, FOREVER, Window, billing_period_at, month_window, reset_window

CUSTOMER_CHUNK = 100  # customers per transaction
RANGE_CHUNK = 400  # subscription windows per aggregate query
LOOKUP_CHUNK = 500  # (customer, feature, timestamp) lookups per level query
FOUR_PLACES = Decimal("0.0001")
CALENDAR_KINDS = {Reset.DAY: TruncDay, Reset.WEEK: TruncWeek, Reset.MONTH: TruncMonth}

Key = tuple[int, int, str, dt.datetime]  # customer id, feature id, window kind, window start


@dataclass(frozen=True)
class CounterDrift:
    """One counter whose stored values differ from what its events add up to."""

    customer: str  # external id
    feature: str  # key
    window: str
    start: dt.datetime
    used: Decimal | None  # stored (None: the counter was missing)
    expected_used: Decimal
    level: Decimal | None
    expected_level: Decimal | None

    @property
    def missing(self) -> bool:
        return self.used is None

    def __str__(self) -> str:
        where = f"{self.customer} / {self.feature} / {self.window} from {self.start:%Y-%m-%d %H:%M}"
        if self.missing:
            return f"{where}: missing; used {_fmt(self.expected_used)}"
        change = f"used {_fmt(self.used)} -> {_fmt(self.expected_used)}"
        if self.level != self.expected_level:
            change += f", level {_fmt(self.level)} -> {_fmt(self.expected_level)}"
        return f"{where}: {change}"


@dataclass
class RebuildReport:
    dry_run: bool
    events: int = 0
    counters: int = 0  # counters checked (existing and missing)
    drifts: list[CounterDrift] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(1 for d in self.drifts if d.missing)

    @property
    def summary(self) -> str:
        found = (
            f"{self.events} events, {self.counters} counters checked: "
            f"{len(self.drifts)} drifted ({self.missing} missing)"
        )
        return found + (
            ", dry run: nothing changed." if self.dry_run else f", {len(self.drifts)} fixed."
        )


def usage_counters_rebuild(
    *,
    dry_run: bool = False,
    customers: Iterable[Customer] | None = None,
    since: dt.datetime | None = None,
    feature: int | None = None,
    kinds: Iterable[str] | None = None,
) -> RebuildReport:
    """Recomputes every counted usage counter (of `customers`, default all) from the event
    ledger, reports each one that drifted and, unless `dry_run`, fixes it. With `feature` and
    `kinds`: only that feature's counters of those window kinds.

    `since`: only the windows that start at or after it, whose events are all at or after it.
    After `usage_events_archive` moved older events out of the ledger, pass its cutoff: the
    windows that start earlier (`never` among them) keep their counters.

    Works a chunk of customers per transaction, with their counters locked in the engine's
    order, so usage recorded meanwhile waits for the chunk instead of being lost. Idempotent:
    a second run finds no drift."""
    report = RebuildReport(dry_run=dry_run)
    if feature is not None:
        scope = {feature: frozenset(kinds or ())}
    else:
        counted = counted_windows()
        scope = {
            pk: frozenset(counted.get(pk, COUNTED_ALWAYS))
            for pk in Feature.objects.filter(kind=FeatureKind.METERED).values_list("pk", flat=True)
        }
    if not any(scope.values()):
        return report
    if customers is not None:
        customer_ids = sorted({c.pk for c in customers})
    else:
        events = UsageEvent.objects.order_by()
        counters = UsageCounter.objects.order_by()
        if feature is not None:
            events = events.filter(feature_id=feature)
            counters = counters.filter(feature_id=feature)
        customer_ids = sorted(
            set(events.values_list("customer_id", flat=True).distinct())
            | set(counters.values_list("customer_id", flat=True).distinct())
        )
    latest = set(
        Feature.objects.filter(aggregation=Aggregation.LATEST).values_list("pk", flat=True)
    )
    for offset in range(0, len(customer_ids), CUSTOMER_CHUNK):
        chunk = customer_ids[offset : offset + CUSTOMER_CHUNK]
        with transaction.atomic():
            _rebuild_chunk(chunk, latest, report, since, scope)
            if not dry_run:
                snapshots.changed(chunk)
    return report


def _rebuild_chunk(
    customer_ids: list[int],
    latest: set[int],
    report: RebuildReport,
    since: dt.datetime | None,
    scope: dict[int, frozenset[str]],
) -> None:
    """`scope`: the window kinds to rebuild per feature (the others are not kept)."""
    counters = UsageCounter.objects.filter(
        customer_id__in=customer_ids, feature_id__in=list(scope)
    ).order_by("customer_id", "feature_id", "window", "start")
    events = UsageEvent.objects.filter(
        customer_id__in=customer_ids, feature_id__in=list(scope), reversed_at=None
    )
    if since is not None:
        counters = counters.filter(start__gte=since)
        events = events.filter(timestamp__gte=since)
    if not report.dry_run:
        counters = counters.select_for_update()
    stored = {
        (c.customer_id, c.feature_id, c.window, c.start): c
        for c in counters
        if c.window in scope[c.feature_id]
    }

    kinds = frozenset().union(*scope.values())
    expected: dict[Key, _Expected] = {}
    report.events += events.count()
    _calendar_windows(events, expected, kinds)
    if kinds & {Reset.NEVER, Reset.BILLING_PERIOD}:
        _subscription_windows(events, expected, list(scope))
    expected = {
        key: e
        for key, e in expected.items()
        if key[2] in scope.get(key[1], ())
        # windows begun before `since` are partly out of sight: left alone
        and (since is None or key[3] >= since)
    }
    _levels(expected, latest)

    names = dict(Customer.objects.filter(pk__in=customer_ids).values_list("pk", "external_id"))
    keys = dict(Feature.objects.values_list("pk", "key"))
    changed, created = [], []
    for key in sorted(set(stored) | set(expected)):
        want = expected.get(key) or _Expected(end=stored[key].end)
        have = stored.get(key)
        report.counters += 1
        if have is not None and (
            _q4(have.used) == want.used
            and have.level == want.level
            and have.level_at == want.level_at
        ):
            continue
        report.drifts.append(
            CounterDrift(
                customer=names.get(key[0], str(key[0])),
                feature=keys.get(key[1], str(key[1])),
                window=key[2],
                start=key[3],
                used=None if have is None else _q4(have.used),
                expected_used=want.used,
                level=None if have is None else have.level,
                expected_level=want.level,
            )
        )
        if have is None:
            have = UsageCounter(
                customer_id=key[0], feature_id=key[1], window=key[2], start=key[3], end=want.end
            )
            created.append(have)
        else:
            changed.append(have)
        have.used, have.level, have.level_at = want.used, want.level, want.level_at
    if not report.dry_run:
        UsageCounter.objects.bulk_update(changed, ["used", "level", "level_at"], batch_size=500)
        UsageCounter.objects.bulk_create(created, batch_size=500, ignore_conflicts=True)


@dataclass
class _Expected:
    end: dt.datetime
    used: Decimal = Decimal("0.0000")
    last_at: dt.datetime | None = None
    level: Decimal | None = None
    level_at: dt.datetime | None = None

    def add(self, used, last_at) -> None:
        self.used = _q4(self.used + _decimal(used))
        last_at = _datetime(last_at)
        if self.last_at is None or last_at > self.last_at:
            self.last_at = last_at


def _calendar_windows(events, expected: dict[Key, _Expected], kinds: frozenset[str]) -> None:
    """Day, week and month windows (those of `kinds`): one GROUP BY per kind."""
    for kind, trunc in CALENDAR_KINDS.items():
        if kind not in kinds:
            continue
        rows = (
            events.annotate(window_start=trunc("timestamp", tzinfo=dt.UTC))
            .values("customer_id", "feature_id", "window_start")
            .annotate(used=Sum("quantity"), last_at=Max("timestamp"))
            .order_by()
        )
        for row in rows:
            start = row["window_start"]
            key = (row["customer_id"], row["feature_id"], kind, start)
            window = reset_window(kind, start, anchor=None)
            expected.setdefault(key, _Expected(end=window.end)).add(row["used"], row["last_at"])


@dataclass(frozen=True)
class _Range:
    """Events of `customer_id` with lo <= timestamp < hi belong to window `kind`/`start`."""

    customer_id: int
    lo: dt.datetime
    hi: dt.datetime
    kind: str
    start: dt.datetime
    end: dt.datetime


def _subscription_windows(events, expected: dict[Key, _Expected], feature_ids: list[int]) -> None:
    """`never` and `billing_period` windows: the ranges of each customer's timeline (from its
    subscriptions), joined to the events in chunks of RANGE_CHUNK ranges."""
    spans = {
        row["customer_id"]: (row["first"], row["last"])
        for row in events.values("customer_id")
        .annotate(first=Min("timestamp"), last=Max("timestamp"))
        .order_by()
    }
    subscriptions = defaultdict(list)
    for sub in (
        Subscription.objects.filter(customer_id__in=spans)
        .select_related("plan")
        .order_by("started_at", "pk")
    ):
        subscriptions[sub.customer_id].append(sub)
    ranges = [
        r
        for customer_id, (first, last) in spans.items()
        for r in _timeline(
            customer_id, subscriptions[customer_id], first, last + dt.timedelta(microseconds=1)
        )
    ]
    for offset in range(0, len(ranges), RANGE_CHUNK):
        chunk = ranges[offset : offset + RANGE_CHUNK]
        for index, feature_id, used, last_at in _sum_by_range(chunk, feature_ids):
            r = chunk[index]
            key = (r.customer_id, feature_id, r.kind, r.start)
            expected.setdefault(key, _Expected(end=r.end)).add(used, last_at)


def _timeline(customer_id: int, subs: list[Subscription], lo: dt.datetime, hi: dt.datetime):
    """The `never` and `billing_period` ranges covering [lo, hi) for one customer."""
    segments: list[tuple[dt.datetime, dt.datetime, Subscription | None]] = []
    cursor = lo
    for i, sub in enumerate(subs):
        ends = sub.ended_at
        if ends is None and sub.status not in SUBSCRIPTION_CURRENT:
            ends = sub.current_period_end
        ends = min(ends or FOREVER, subs[i + 1].started_at if i + 1 < len(subs) else FOREVER)
        if ends <= sub.started_at:
            continue
        if cursor < sub.started_at:
            segments.append((cursor, sub.started_at, None))
        segments.append((max(cursor, sub.started_at), ends, sub))
        cursor = max(cursor, ends)
    segments.append((cursor, FOREVER, None))
    for seg_lo, seg_hi, sub in segments:
        seg_lo, seg_hi = max(seg_lo, lo), min(seg_hi, hi)
        if seg_lo >= seg_hi:
            continue
        never_start = sub.started_at if sub else EPOCH
        yield _Range(customer_id, seg_lo, seg_hi, Reset.NEVER, never_start, FOREVER)
        t = seg_lo
        while t < seg_hi:
            window, piece_end = _billing_window(sub, t)
            piece_end = min(piece_end, seg_hi)
            yield _Range(customer_id, t, piece_end, Reset.BILLING_PERIOD, window.start, window.end)
            t = piece_end


def _billing_window(sub: Subscription | None, at: dt.datetime) -> tuple[Window, dt.datetime]:
    """The billing window the engine files `at` under, and where that stops being so."""
    if sub is None:
        window = month_window(at)
        return window, window.end
    stored = Window(sub.current_period_start, sub.current_period_end)
    if stored.start <= at < stored.end:
        return stored, stored.end
    window = billing_period_at(sub.started_at, sub.plan.interval, at)
    # The stored period takes over where it begins inside a grid window.
    stops = stored.start if window.start < stored.start < window.end and at < stored.start else None
    return window, stops or window.end


def _sum_by_range(
    ranges: list[_Range], feature_ids: list[int]
) -> Iterator[tuple[int, int, object, object]]:
    """(range index, feature id, SUM(quantity), MAX(timestamp)) of the events of `feature_ids`
    in each range."""
    table = connection.ops.quote_name(UsageEvent._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    rows = ", ".join(["(%s, %s, %s, %s)"] * len(ranges))
    params = []
    for index, r in enumerate(ranges):
        params += [index, r.customer_id, adapt(r.lo), adapt(r.hi)]
    params += feature_ids
    features = ", ".join(["%s"] * len(feature_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH ranges (idx, customer_id, lo, hi) AS (VALUES {rows}) "
            "SELECT ranges.idx, e.feature_id, SUM(e.quantity), MAX(e.timestamp) "
            f"FROM ranges JOIN {table} e ON e.customer_id = ranges.customer_id "
            "AND e.timestamp >= ranges.lo AND e.timestamp < ranges.hi "
            f"AND e.feature_id IN ({features}) AND e.reversed_at IS NULL "
            "GROUP BY ranges.idx, e.feature_id",
            params,
        )
        yield from cursor.fetchall()


def _levels(expected: dict[Key, _Expected], latest: set[int]) -> None:
    """A `latest` feature's level: the quantity of each window's last event (highest id among
    events sharing its timestamp), looked up by (customer, feature, timestamp) in chunks."""
    wanted = sorted({(c, f, e.last_at) for (c, f, _, _), e in expected.items() if f in latest})
    table = connection.ops.quote_name(UsageEvent._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    found: dict[tuple[int, int, dt.datetime], tuple[int, Decimal]] = {}
    for offset in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[offset : offset + LOOKUP_CHUNK]
        params = [v for c, f, at in chunk for v in (c, f, adapt(at))]
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH wanted (customer_id, feature_id, ts) AS "
                f"(VALUES {', '.join(['(%s, %s, %s)'] * len(chunk))}) "
                "SELECT e.customer_id, e.feature_id, e.timestamp, e.id, e.quantity "
                f"FROM wanted JOIN {table} e ON e.customer_id = wanted.customer_id "
                "AND e.feature_id = wanted.feature_id AND e.timestamp = wanted.ts "
                "AND e.reversed_at IS NULL",
                params,
            )
            for c, f, at, pk, quantity in cursor.fetchall():
                key = (c, f, _datetime(at))
                if key not in found or pk > found[key][0]:
                    found[key] = (pk, _q4(_decimal(quantity)))
    for (c, f, _, _), e in expected.items():
        if f in latest:
            e.level, e.level_at = found[(c, f, e.last_at)][1], e.last_at


def _decimal(value) -> Decimal:
    # SQLite sums decimals as floats; PostgreSQL as numeric.
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _q4(value: Decimal) -> Decimal:
    return value.quantize(FOUR_PLACES)


def _datetime(value) -> dt.datetime:
    if isinstance(value, str):  # SQLite, raw SQL
        value = parse_datetime(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _fmt(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.normalize():f}"


def counted_windows_ensure(*, feature: Feature, kinds: Iterable[str]) -> None:
    """Makes the counters of `kinds` kept for `feature`, from now on and from the ledger's
    start: in the caller's transaction, before whatever uses the kinds is saved.

    Kinds are added, never removed. Adding one locks the counters table against writers
    (checks keep reading) until the caller commits: a writer that had locked counters first
    commits before, one that locks after sees the new kind counted (its locking statement
    reads the catalog's version or the counted kinds) and starts again with it. The kind is
    recorded, the catalog's version bumped and that feature's counters of the kind recomputed
    from the ledger, all under the lock: usage writes pause meanwhile (docs/performance.md)."""
    wanted = set(kinds)
    if not wanted - set(counted_windows([feature.pk]).get(feature.pk, COUNTED_ALWAYS)):
        return
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                table = connection.ops.quote_name(UsageCounter._meta.db_table)
                cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        new = wanted - set(counted_windows([feature.pk]).get(feature.pk, COUNTED_ALWAYS))
        if not new:  # another transaction added them while this one waited for the lock
            return
        CountedWindow.objects.bulk_create(
            [CountedWindow(feature=feature, window=kind) for kind in sorted(new)]
        )
        catalog_version_bump()
        usage_counters_rebuild(feature=feature.pk, kinds=new)
        snapshots.changed(None)
