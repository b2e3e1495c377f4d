"""Period close: at each period end the next period's invoice (plan line, the closed period's
entitlement lines and the overage of its soft limits), the period rolled, a scheduled downgrade
applied, a subscription set to cancel ended. Safe to run twice or concurrently."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import Invoice, InvoiceLine, InvoicePurpose, InvoiceStatus, LineKind
from catalog.models import Aggregation, Enforcement, FeatureKind, Plan, Reset
from core.errors import DomainError, InvalidInput
from core.text import period_text, quantity_text
from customers import services as customer_services
from customers.engine import Entitlement, entitlement_check, entitlements_resolve
from customers.engine.arithmetic import grant_units
from customers.models import SUBSCRIPTION_CURRENT, Customer, Subscription
from customers.periods import billing_period_at, reset_window

from .invoices import LineDraft, entitlement_lines, plan_line
from .payments import invoice_issue_charged

logger = logging.getLogger(__name__)

# "An instant inside the period that closed": periods are [start, end).
EPSILON = dt.timedelta(microseconds=1)


def subscription_lock(pk: int) -> Subscription:
    subscription = Subscription.objects.select_for_update().get(pk=pk)
    # Related rows are read after the lock, unlocked (FOR UPDATE would lock joined rows too).
    subscription.plan = Plan.objects.get(pk=subscription.plan_id)
    subscription.customer = Customer.objects.get(pk=subscription.customer_id)
    return subscription


def period_at(subscription: Subscription, at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    if subscription.current_period_start <= at < subscription.current_period_end:
        return subscription.current_period_start, subscription.current_period_end
    window = billing_period_at(subscription.started_at, subscription.plan.interval, at)
    return window.start, window.end


def _bills_overage(e: Entitlement) -> bool:
    return (
        e.kind == FeatureKind.METERED
        and e.enforcement == Enforcement.SOFT
        and not e.unlimited
        and e.overage_price is not None
    )


def _overage_windows(
    subscription: Subscription, e: Entitlement, start: dt.datetime, end: dt.datetime
) -> Iterator[tuple[Entitlement, dt.datetime, dt.datetime | None]]:
    """The entitlement as it stood at the end of each usage window overlapping [start, end),
    with the window it bills. A level (`latest`) is billed per billing period; a sum per reset
    window, evaluated at the window's end or the period's end, whichever comes first."""
    if e.aggregation == Aggregation.LATEST:
        yield e, start, end
        return
    if e.reset in (Reset.BILLING_PERIOD, Reset.NEVER):
        yield e, e.period_start, e.period_end
        return
    t = start
    while t < end:
        window = reset_window(
            e.reset, t, anchor=subscription.started_at, interval=subscription.plan.interval
        )
        at_window = entitlement_check(
            subscription.customer, e.feature, at=min(window.end, end) - EPSILON
        )
        if at_window.reset == e.reset and _bills_overage(at_window):
            yield at_window, at_window.period_start, at_window.period_end
        t = window.end


def _overage_billed(customer: Customer, feature_id: int, window_start: dt.datetime) -> Decimal:
    billed = InvoiceLine.objects.filter(
        invoice__customer=customer,
        invoice__status__in=[InvoiceStatus.ISSUED, InvoiceStatus.PAID],
        kind=LineKind.OVERAGE,
        feature_id=feature_id,
        period_start=window_start,
    ).aggregate(total=Sum("quantity"))["total"]
    return billed or Decimal("0")


def overage_lines(
    subscription: Subscription, *, start: dt.datetime, end: dt.datetime
) -> list[LineDraft]:
    """Overage of soft limits in the period [start, end): usage past allowance and grants (the
    engine's `overage`) at the overage price. What a window already billed on an issued invoice
    is subtracted, so no unit is billed twice. Raises InvalidInput when an overage price is in
    another currency than the customer's (nothing is issued; fix the price and run again)."""
    customer = subscription.customer
    lines = []
    for e in entitlements_resolve(customer, at=end - EPSILON):
        if not _bills_overage(e):
            continue
        for window_e, w_start, w_end in _overage_windows(subscription, e, start, end):
            price = window_e.overage_price
            if str(price.currency) != customer.currency:
                raise InvalidInput(
                    f"The overage price of {e.name} is in {price.currency}; "
                    f"{customer} is billed in {customer.currency}.",
                    code="currency_mismatch",
                )
            quantity = (window_e.overage or 0) - _overage_billed(customer, e.feature_id, w_start)
            if quantity <= 0:
                continue
            included = f"{quantity_text(window_e.limit, e.unit)} included"
            if granted := grant_units(window_e):
                included += f" and {quantity_text(granted, e.unit)} from top-ups and grants"
            lines.append(
                LineDraft(
                    kind=LineKind.OVERAGE,
                    description=(
                        f"{e.name} overage: {quantity_text(quantity, e.unit)} beyond {included} "
                        f"({period_text(w_start, w_end)})"
                    ),
                    unit_price=price,
                    quantity=quantity,
                    feature_id=e.feature_id,
                    period_start=w_start,
                    period_end=w_end,
                )
            )
    return lines


@dataclass(frozen=True)
class PeriodClosed:
    subscription: Subscription
    closed_start: dt.datetime
    closed_end: dt.datetime
    invoice: Invoice | None
    ended: bool


@dataclass
class PeriodCloseResult:
    periods_closed: int = 0
    subscriptions_ended: int = 0
    invoices: list[str] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "periods_closed": self.periods_closed,
            "subscriptions_ended": self.subscriptions_ended,
            "invoices": list(self.invoices),
            "failed": {str(k): v for k, v in self.failed.items()},
        }


@transaction.atomic
def _period_close_one(subscription_id: int, now: dt.datetime) -> PeriodClosed | None:
    """Closes the subscription's current period if it ended by `now`, else returns None.

    The subscription row stays locked to commit and the period is re-read under the lock, so
    a concurrent or repeated close finds nothing to do (and the database refuses a second
    period invoice for the same period)."""
    subscription = subscription_lock(subscription_id)
    if subscription.status not in SUBSCRIPTION_CURRENT or subscription.current_period_end > now:
        return None
    customer = subscription.customer
    start, end = subscription.current_period_start, subscription.current_period_end
    # What the closed period included and used, and its overage: read before rolling, while
    # the engine still sees the closed period as the current one.
    usage_lines = entitlement_lines(customer, at=end - EPSILON)
    overage = overage_lines(subscription, start=start, end=end)
    if subscription.cancel_at_period_end:
        subscription = customer_services.subscription_roll_period(subscription=subscription)
        invoice = None
        if overage:
            invoice = invoice_issue_charged(
                customer=customer,
                purpose=InvoicePurpose.CLOSING,
                subscription=subscription,
                period_start=start,
                period_end=end,
                lines=[*usage_lines, *overage],
                at=now,
            )
        return PeriodClosed(subscription, start, end, invoice, ended=True)
    subscription = customer_services.subscription_roll_period(
        subscription=subscription, plan=subscription.scheduled_plan
    )
    plan = subscription.plan
    next_start, next_end = subscription.current_period_start, subscription.current_period_end
    invoice = invoice_issue_charged(
        customer=customer,
        purpose=InvoicePurpose.PERIOD,
        subscription=subscription,
        period_start=next_start,
        period_end=next_end,
        lines=[
            plan_line(plan, next_start, next_end, price=subscription.plan_version.price),
            *usage_lines,
            *overage,
        ],
        at=now,
    )
    return PeriodClosed(subscription, start, end, invoice, ended=False)


MAX_PERIODS_PER_RUN = 1200  # a century of monthly periods: a guard, not a limit in practice


def subscription_periods_close(
    *, subscription: Subscription, now: dt.datetime | None = None
) -> list[PeriodClosed]:
    """Closes every period of the subscription that ended by `now`, oldest first, each in its
    own transaction with the subscription row locked: for each one the next period's invoice
    (plan line, the closed period's entitlement lines and overage) is issued and the period
    rolled, applying a scheduled downgrade; a subscription set to cancel ends instead, with an
    invoice only for its overage. Idempotent: a period already closed is skipped."""
    now = (now or timezone.now()).astimezone(dt.UTC)
    closed = []
    for _ in range(MAX_PERIODS_PER_RUN):
        result = _period_close_one(subscription.pk, now)
        if result is None:
            break
        closed.append(result)
    return closed


def periods_close(*, now: dt.datetime | None = None) -> PeriodCloseResult:
    """Closes the ended periods of every active subscription (see subscription_periods_close).
    Safe to run twice or concurrently: nothing is issued twice. A subscription that fails with
    a domain error (e.g. an overage price in the wrong currency) is logged and reported in
    `failed`; the others are closed; the next run retries it."""
    now = (now or timezone.now()).astimezone(dt.UTC)
    result = PeriodCloseResult()
    due = (
        Subscription.objects.filter(status__in=SUBSCRIPTION_CURRENT, current_period_end__lte=now)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for pk in list(due):
        try:
            closed = subscription_periods_close(subscription=Subscription(pk=pk), now=now)
        except DomainError as error:
            logger.error("Closing the periods of subscription %s failed: %s", pk, error.message)
            result.failed[pk] = error.message
            continue
        for item in closed:
            result.periods_closed += 1
            result.subscriptions_ended += int(item.ended)
            if item.invoice is not None:
                result.invoices.append(item.invoice.number)
    return result
