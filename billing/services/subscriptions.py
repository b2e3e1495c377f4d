"""Subscriptions with their invoices: subscribing (the first period invoiced in advance),
cancelling at the period end, and plan changes: an upgrade at once with a proration invoice by
days, a downgrade scheduled for the period end."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from djmoney.money import Money

from billing.models import Invoice, InvoiceLine, InvoicePurpose, InvoiceStatus, LineKind
from catalog.models import Plan, PlanStatus
from catalog.selectors import plan_is_upgrade
from core.errors import Conflict, InvalidInput
from core.text import day_text, money_round
from customers import services as customer_services
from customers.models import SUBSCRIPTION_CURRENT, Customer, Subscription

from .invoices import LineDraft, entitlement_lines, plan_line
from .payments import invoice_issue_charged
from .period_close import period_at, subscription_lock, subscription_periods_close


@transaction.atomic
def subscription_create(
    *, customer: Customer, plan: Plan, at: dt.datetime | None = None
) -> Subscription:
    """Subscribes the customer (customers.services.subscription_start locks the customer) and
    issues the first period's invoice in advance: the plan line and the entitlement lines.
    Raises Conflict if a subscription is active, InvalidInput for a plan not active or in
    another currency."""
    at = at or timezone.now()
    subscription = customer_services.subscription_start(customer=customer, plan=plan, started_at=at)
    start, end = subscription.current_period_start, subscription.current_period_end
    invoice_issue_charged(
        customer=subscription.customer,
        purpose=InvoicePurpose.PERIOD,
        subscription=subscription,
        period_start=start,
        period_end=end,
        lines=[
            plan_line(plan, start, end, price=subscription.plan_version.price),
            *entitlement_lines(subscription.customer, at=start),
        ],
        at=at,
    )
    return subscription


@transaction.atomic
def subscription_cancel(*, subscription: Subscription) -> Subscription:
    """Cancels at the period end (the subscription row is locked by customers.services): the
    period already paid runs out, the period close bills its overage and issues no new plan
    invoice. Raises Conflict if the subscription has already ended."""
    _active_check(subscription)
    return customer_services.subscription_cancel(subscription=subscription, at_period_end=True)


@dataclass(frozen=True)
class ProrationPreview:
    """What an upgrade at `at` would invoice: a credit for the unused days of the current
    plan and a charge for the new plan's remaining days."""

    lines: list[LineDraft]
    total: Money
    remaining_days: int
    period_days: int
    period_start: dt.datetime
    period_end: dt.datetime
    at: dt.datetime


@dataclass(frozen=True)
class PlanChange:
    subscription: Subscription
    invoice: Invoice | None  # the proration invoice of an upgrade
    scheduled: bool  # a downgrade waiting for the period end


def _active_check(subscription: Subscription) -> None:
    if subscription.status not in SUBSCRIPTION_CURRENT:
        raise Conflict("This subscription has ended.", code="subscription_ended")


def _plan_check(subscription: Subscription, plan: Plan) -> None:
    """The plan can be changed to: active, in the customer's currency, same interval."""
    if plan.status != PlanStatus.ACTIVE:
        raise InvalidInput(f"The plan {plan.key!r} is not active.", code="plan_not_active")
    currency = subscription.customer.currency
    if str(plan.price.currency) != currency:
        raise InvalidInput(
            f"The plan {plan.key!r} is priced in {plan.price.currency}; this customer is billed "
            f"in {currency}.",
            code="currency_mismatch",
        )
    if plan.interval != subscription.plan.interval:
        # Periods follow the subscription's anchor, which a plan change cannot move.
        raise InvalidInput(
            "Switching between monthly and yearly billing is not possible during a "
            "subscription; cancel at the period end and subscribe to the new plan.",
            code="interval_change",
        )


def _price_paid(subscription: Subscription, period_start: dt.datetime) -> Money:
    """What the current plan cost for this period: the price on the period invoice when it
    billed this plan (prices change for new periods only), else the plan's price."""
    line = (
        InvoiceLine.objects.filter(
            invoice__subscription=subscription,
            invoice__purpose=InvoicePurpose.PERIOD,
            invoice__period_start=period_start,
            kind=LineKind.PLAN,
            plan=subscription.plan,
        )
        .exclude(invoice__status__in=[InvoiceStatus.VOID, InvoiceStatus.DRAFT])
        .order_by("-pk")
        .first()
    )
    return line.unit_price if line else subscription.plan_version.price


def _proration(subscription: Subscription, plan: Plan, at: dt.datetime) -> ProrationPreview:
    start, end = period_at(subscription, at)
    currency = subscription.customer.currency
    period_days = max(1, (end.date() - start.date()).days)
    remaining = min(period_days, max(0, (end.date() - at.date()).days))
    share = Decimal(remaining) / Decimal(period_days)
    old = subscription.plan
    credit = money_round(-_price_paid(subscription, start).amount * share, currency)
    charge = money_round(plan.price.amount * share, currency)
    days = f"{remaining} of {period_days} days"
    lines = [
        LineDraft(
            kind=LineKind.PRORATION,
            description=f"Unused time on {old.name} from {day_text(at)} ({days})",
            unit_price=credit,
            amount=credit,
            plan_id=old.pk,
            period_start=at,
            period_end=end,
        ),
        LineDraft(
            kind=LineKind.PRORATION,
            description=f"Remaining time on {plan.name} from {day_text(at)} ({days})",
            unit_price=charge,
            amount=charge,
            plan_id=plan.pk,
            period_start=at,
            period_end=end,
        ),
    ]
    return ProrationPreview(
        lines=lines,
        total=money_round(credit.amount + charge.amount, currency),
        remaining_days=remaining,
        period_days=period_days,
        period_start=start,
        period_end=end,
        at=at,
    )


def _upgrade_check(subscription: Subscription, plan: Plan) -> None:
    _active_check(subscription)
    if plan.pk == subscription.plan_id:
        raise InvalidInput("The customer is already on this plan.", code="same_plan")
    _plan_check(subscription, plan)
    if not plan_is_upgrade(subscription.plan, plan):
        raise InvalidInput(
            f"{plan.name} is not an upgrade from {subscription.plan.name}; a downgrade "
            "applies at the period end without proration.",
            code="not_an_upgrade",
        )


def proration_preview(
    *, subscription: Subscription, plan: Plan, at: dt.datetime | None = None
) -> ProrationPreview:
    """The lines and total an upgrade to `plan` at `at` (default now) would invoice, by days:
    amount = price x remaining days / period days, rounded half-up per line. Writes and locks
    nothing. Raises InvalidInput when `plan` is not an upgrade (or not allowed), Conflict for
    an ended subscription."""
    at = (at or timezone.now()).astimezone(dt.UTC)
    subscription = Subscription.objects.select_related("plan", "customer").get(pk=subscription.pk)
    _upgrade_check(subscription, plan)
    return _proration(subscription, plan, at)


@transaction.atomic
def subscription_change_plan(
    *, subscription: Subscription, plan: Plan, at: dt.datetime | None = None
) -> PlanChange:
    """Moves the subscription to `plan`. Locks the subscription row (after closing any period
    that already ended, see subscription_periods_close).

    - upgrade (higher rank): at once; an invoice with the proration lines (credit for the
      unused days of the old plan, charge for the new plan's remaining days) and the new
      plan's entitlement lines is issued at once. Usage so far counts against the new limits.
    - downgrade (lower or equal rank): scheduled for the period end (no invoice now).
    - the current plan while a downgrade is scheduled: the scheduled change is dropped.

    Raises InvalidInput (`same_plan`, `plan_not_active`, `currency_mismatch`,
    `interval_change`), Conflict (`subscription_ended`)."""
    at = (at or timezone.now()).astimezone(dt.UTC)
    subscription_periods_close(subscription=subscription, now=at)
    subscription = subscription_lock(subscription.pk)
    _active_check(subscription)
    if plan.pk == subscription.plan_id:
        if subscription.scheduled_plan_id is None:
            raise InvalidInput("The customer is already on this plan.", code="same_plan")
        subscription = customer_services.subscription_schedule_plan(
            subscription=subscription, plan=None
        )
        return PlanChange(subscription=subscription, invoice=None, scheduled=False)
    _plan_check(subscription, plan)
    if at < subscription.current_period_start:
        raise InvalidInput("A plan change cannot take effect in the past.", code="invalid_at")
    if not plan_is_upgrade(subscription.plan, plan):
        subscription = customer_services.subscription_schedule_plan(
            subscription=subscription, plan=plan
        )
        return PlanChange(subscription=subscription, invoice=None, scheduled=True)
    preview = _proration(subscription, plan, at)
    subscription = customer_services.subscription_set_plan(subscription=subscription, plan=plan)
    invoice = invoice_issue_charged(
        customer=subscription.customer,
        purpose=InvoicePurpose.PLAN_CHANGE,
        subscription=subscription,
        period_start=at,
        period_end=preview.period_end,
        lines=[*preview.lines, *entitlement_lines(subscription.customer, at=at)],
        at=at,
    )
    return PlanChange(subscription=subscription, invoice=invoice, scheduled=False)
