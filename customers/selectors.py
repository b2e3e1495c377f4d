"""Reads of customers and usage for pages and API answers (the engine answers entitlements)."""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour, TruncMonth
from django.utils import timezone

from catalog.models import Feature
from core.errors import InvalidInput

from . import engine
from .models import SUBSCRIPTION_CURRENT, Customer, Subscription, UsageEvent
from .periods import add_months

BUCKET_WINDOWS = {"hour": TruncHour, "day": TruncDay, "month": TruncMonth}
MAX_BUCKETS = 2000


def customer_search(*, term: str, queryset: QuerySet[Customer] | None = None):
    """Customers whose name, email or external id contains `term` (case-insensitive)."""
    queryset = queryset if queryset is not None else Customer.objects.all()
    term = term.strip()
    if not term:
        return queryset.none()
    return queryset.filter(
        Q(name__icontains=term) | Q(email__icontains=term) | Q(external_id__icontains=term)
    )


def subscribers_over_limit(*, version_ids, feature_id: int, limit: Decimal) -> frozenset[int]:
    """The customers (ids) subscribed on these plan versions who have used more of a feature
    this period than `limit` plus their grants: those a lower limit would put over it at once.
    A customer with an override of the feature in force keeps it, and is not counted. Usage
    and grants as the engine answers them (one check per subscriber: a preview, not a hot
    path)."""
    feature = Feature.objects.get(pk=feature_id)
    subscriptions = Subscription.objects.filter(
        plan_version_id__in=list(version_ids), status__in=SUBSCRIPTION_CURRENT
    ).select_related("customer")
    over = set()
    for subscription in subscriptions.iterator():
        entitlement = engine.entitlement_check(subscription.customer, feature.key)
        if entitlement.source == "override":
            continue
        used = entitlement.usage or Decimal("0")
        if used > limit + (entitlement.granted or Decimal("0")):
            over.add(subscription.customer_id)
    return frozenset(over)


@dataclass(frozen=True)
class Bucket:
    start: dt.datetime
    usage: Decimal


def _bucket_starts(start: dt.datetime, end: dt.datetime, window: str) -> list[dt.datetime]:
    if window == "month":
        first = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        step = lambda t: add_months(t, 1)  # noqa: E731
    elif window == "day":
        first = start.replace(hour=0, minute=0, second=0, microsecond=0)
        step = lambda t: t + dt.timedelta(days=1)  # noqa: E731
    else:
        first = start.replace(minute=0, second=0, microsecond=0)
        step = lambda t: t + dt.timedelta(hours=1)  # noqa: E731
    starts, current = [], first
    while current < end:
        starts.append(current)
        if len(starts) > MAX_BUCKETS:
            raise InvalidInput(
                f"That range has more than {MAX_BUCKETS} {window} buckets; use a wider window.",
                code="range_too_large",
            )
        current = step(current)
    return starts


def usage_buckets(
    *,
    customer: Customer,
    feature: Feature,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    window: str = "day",
) -> list[Bucket]:
    """Usage per hour/day/month in [start, end) (default: the entitlement's current period).
    `sum` features add up events; `latest` features show the last level of each bucket,
    carried forward through buckets without a report. Every bucket is listed, zeros too.
    Reversed events count for nothing."""
    if feature.kind != "metered":
        raise InvalidInput(f"{feature.key!r} is not a metered feature.", code="not_metered")
    if start is None or end is None:
        current = engine.entitlement_check(customer, feature)
        now = timezone.now()
        start = start or current.period_start or now - dt.timedelta(days=30)
        end = end or current.period_end or now
    if end <= start:
        raise InvalidInput("to must come after from.", code="invalid_range")
    starts = _bucket_starts(start, end, window)
    trunc = BUCKET_WINDOWS[window]("timestamp", tzinfo=dt.UTC)
    counted = UsageEvent.objects.filter(customer=customer, feature=feature, reversed_at=None)
    events = counted.filter(timestamp__gte=start, timestamp__lt=end)
    if feature.aggregation == "latest":
        last_at = dict(
            events.annotate(bucket=trunc)
            .values("bucket")
            .annotate(at=Max("timestamp"))
            .values_list("bucket", "at")
        )
        levels = dict(
            events.filter(timestamp__in=list(last_at.values())).values_list("timestamp", "quantity")
        )
        by_bucket = {b: levels.get(at, Decimal(0)) for b, at in last_at.items()}
        previous = (
            counted.filter(timestamp__lt=start)
            .order_by("-timestamp")
            .values_list("quantity", flat=True)
            .first()
        )
        level, buckets = previous or Decimal(0), []
        for bucket_start in starts:
            level = by_bucket.get(bucket_start, level)
            buckets.append(Bucket(bucket_start, level))
        return buckets
    sums = dict(
        events.annotate(bucket=trunc)
        .values("bucket")
        .annotate(total=Sum("quantity"))
        .values_list("bucket", "total")
    )
    return [Bucket(s, sums.get(s) or Decimal(0)) for s in starts]
