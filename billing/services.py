"""Everything that writes billing: invoices and their numbers, subscriptions with their
invoices, plan changes with proration, top-up purchases and period close (DESIGN.md "Billing").

Lock order, everywhere: customer or subscription row first, then the invoice, then the year's
InvoiceSequence row last (held only from numbering to commit). Amounts are Decimal, rounded
half-up to the currency's minor unit per line; an invoice's total is the sum of its lines.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone
from djmoney.money import Money
from moneyed import get_currency
from moneyed.l10n import format_money

from catalog.models import Aggregation, Enforcement, FeatureKind, Plan, PlanStatus, Reset, TopUpPack
from core import bounds
from core.errors import Conflict, DomainError, InvalidInput, PaymentFailed
from customers import services as customer_services
from customers.capacity import grant_units
from customers.engine import Entitlement, entitlement_check, entitlements_resolve
from customers.models import Customer, GrantSource, Subscription, SubscriptionStatus
from customers.periods import billing_period_at, reset_window

from .models import (
    Invoice,
    InvoiceLine,
    InvoicePurpose,
    InvoiceSequence,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentStatus,
    TopUpPurchase,
)
from .payments import PaymentProvider, payment_provider_default

logger = logging.getLogger(__name__)

# "An instant inside the period that closed": periods are [start, end).
EPSILON = dt.timedelta(microseconds=1)
ONE = Decimal("1")


# --- money and words ----------------------------------------------------------------------


def currency_places(currency: str) -> int:
    """Decimal places of the currency's minor unit: 2 for USD and EUR, 0 for JPY."""
    return len(str(get_currency(str(currency)).sub_unit)) - 1


def money_round(amount: Decimal, currency: str) -> Money:
    """`amount` rounded half-up (ties away from zero) to the currency's minor unit."""
    exponent = Decimal(1).scaleb(-currency_places(currency))
    return Money(Decimal(amount).quantize(exponent, rounding=ROUND_HALF_UP), str(currency))


def money_text(money: Money) -> str:
    """Money with as many decimals as it has (at least the currency's): `$0.0125`, `€50.00`."""
    return format_money(money, locale="en_US", currency_digits=False, decimal_quantization=False)


def quantity_text(value: Decimal | None, unit: str = "") -> str:
    """A quantity without trailing zeros, grouped by thousands: `87.5 GB`, `10,000`."""
    number = format(Decimal(value or 0).normalize(), ",f")
    return f"{number} {unit}".strip()


def day_text(at: dt.datetime) -> str:
    at = at.astimezone(dt.UTC)
    return f"{at:%b} {at.day}, {at.year}"


def period_text(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None:
        return ""
    if end is None:
        return f"since {day_text(start)}"
    return f"{day_text(start)} – {day_text(end)}"


def entitlement_text(entitlement: Entitlement) -> str:
    """What an entitlement line says: "Storage: 100 GB included, 87.5 GB used"."""
    e = entitlement
    if e.kind == FeatureKind.BOOLEAN:
        return f"{e.name}: {'included' if e.has_access else 'not included'}"
    if e.kind == FeatureKind.CONFIG:
        return f"{e.name}: {e.value}"
    used = f"{quantity_text(e.usage, e.unit)} used"
    if e.unlimited:
        return f"{e.name}: unlimited, {used}"
    parts = [f"{quantity_text(e.limit, e.unit)} included"]
    if granted := grant_units(e):
        parts.append(f"{quantity_text(granted, e.unit)} from top-ups and grants")
    parts.append(used)
    return f"{e.name}: " + ", ".join(parts)


# --- lines ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineDraft:
    """A line before it is saved: what previews show and invoices copy. `amount` defaults to
    quantity x unit price rounded half-up to the minor unit."""

    kind: str
    description: str
    unit_price: Money
    quantity: Decimal = ONE
    amount: Money | None = None
    feature_id: int | None = None
    plan_id: int | None = None
    grant_id: int | None = None
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.amount is None:
            currency = str(self.unit_price.currency)
            amount = money_round(self.unit_price.amount * Decimal(self.quantity), currency)
            object.__setattr__(self, "amount", amount)


def plan_line(plan: Plan, start: dt.datetime, end: dt.datetime) -> LineDraft:
    interval = "yearly" if plan.interval == "year" else "monthly"
    return LineDraft(
        kind=LineKind.PLAN,
        description=f"{plan.name} plan, {interval} ({period_text(start, end)})",
        unit_price=plan.price,
        plan_id=plan.pk,
        period_start=start,
        period_end=end,
    )


def entitlement_lines(customer: Customer, *, at: dt.datetime) -> list[LineDraft]:
    """Zero-amount lines for every entitlement with `show_on_invoice`, as the engine resolves
    it at `at` (allowance and usage of the window containing `at`)."""
    zero = Money(0, customer.currency)
    return [
        LineDraft(
            kind=LineKind.ENTITLEMENT,
            description=entitlement_text(e),
            unit_price=zero,
            amount=zero,
            quantity=e.usage if e.kind == FeatureKind.METERED else ONE,
            feature_id=e.feature_id,
            period_start=e.period_start,
            period_end=e.period_end,
        )
        for e in entitlements_resolve(customer, at=at)
        if e.show_on_invoice
    ]


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


# --- invoices -------------------------------------------------------------------------------


def _lines_save(
    invoice: Invoice, drafts: Iterable[LineDraft], *, refresh_total: bool = True
) -> None:
    drafts = list(drafts)
    position = max((line.position for line in invoice.lines.all()), default=0)
    rows = []
    for draft in drafts:
        if {str(draft.unit_price.currency), str(draft.amount.currency)} != {invoice.currency}:
            raise InvalidInput(
                f"A line in {draft.amount.currency} cannot go on an invoice in "
                f"{invoice.currency}: a customer is billed in one currency.",
                code="currency_mismatch",
            )
        position += 1
        rows.append(
            InvoiceLine(
                invoice=invoice,
                position=position,
                kind=draft.kind,
                description=draft.description[:500],
                feature_id=draft.feature_id,
                plan_id=draft.plan_id,
                grant_id=draft.grant_id,
                quantity=draft.quantity,
                unit_price=draft.unit_price,
                amount=draft.amount,
                period_start=draft.period_start,
                period_end=draft.period_end,
            )
        )
    for row in rows:
        row.full_clean(exclude=["invoice"])
    InvoiceLine.objects.bulk_create(rows)
    if refresh_total:
        _total_refresh(invoice)


def _lines_total(invoice: Invoice) -> Money:
    total = invoice.lines.aggregate(total=Sum("amount"))["total"] or Decimal("0")
    return Money(total, invoice.currency)


def _total_refresh(invoice: Invoice) -> None:
    invoice.total = _lines_total(invoice)
    invoice.save(update_fields=["total", "currency"])


def _invoice_lock(invoice: Invoice) -> Invoice:
    return Invoice.objects.select_for_update().get(pk=invoice.pk)


def _refuse_unless_draft(invoice: Invoice) -> None:
    if invoice.status != InvoiceStatus.DRAFT:
        raise Conflict(
            f"Invoice {invoice.number} is {invoice.get_status_display().lower()} and cannot "
            "change; void it and issue a new one instead.",
            code="invoice_immutable",
            details={"number": invoice.number, "status": invoice.status},
        )


@transaction.atomic
def invoice_create(
    *,
    customer: Customer,
    purpose: str = InvoicePurpose.MANUAL,
    subscription: Subscription | None = None,
    period_start: dt.datetime | None = None,
    period_end: dt.datetime | None = None,
    lines: Iterable[LineDraft] = (),
) -> Invoice:
    """A draft invoice in the customer's currency, with `lines`. No number yet; nothing locked
    but the new row."""
    lines = list(lines)
    invoice = Invoice(
        customer=customer,
        subscription=subscription,
        purpose=purpose,
        period_start=period_start,
        period_end=period_end,
        total=Money(sum((line.amount.amount for line in lines), Decimal("0")), customer.currency),
    )
    invoice.full_clean()
    invoice.save()
    _lines_save(invoice, lines, refresh_total=False)
    return invoice


@transaction.atomic
def invoice_line_add(
    *,
    invoice: Invoice,
    kind: str,
    description: str,
    unit_price: Money,
    quantity: Decimal = ONE,
    feature=None,
    plan: Plan | None = None,
    period_start: dt.datetime | None = None,
    period_end: dt.datetime | None = None,
) -> InvoiceLine:
    """Adds a line to a draft (locked). Raises Conflict (`invoice_immutable`) once issued."""
    invoice = _invoice_lock(invoice)
    _refuse_unless_draft(invoice)
    _lines_save(
        invoice,
        [
            LineDraft(
                kind=kind,
                description=description,
                unit_price=unit_price,
                quantity=Decimal(quantity),
                feature_id=feature.pk if feature else None,
                plan_id=plan.pk if plan else None,
                period_start=period_start,
                period_end=period_end,
            )
        ],
    )
    return invoice.lines.order_by("-position").first()


@transaction.atomic
def invoice_draft_recalculate(*, invoice: Invoice) -> Invoice:
    """Recomputes a draft's line amounts (quantity x unit price, rounded) and total, after its
    lines were edited (the admin). Raises Conflict once issued."""
    invoice = _invoice_lock(invoice)
    _refuse_unless_draft(invoice)
    for line in invoice.lines.all():
        if str(line.unit_price.currency) != invoice.currency:
            raise InvalidInput(
                f"Line {line.description!r} is priced in {line.unit_price.currency}; this "
                f"invoice is in {invoice.currency}.",
                code="currency_mismatch",
            )
        line.amount = money_round(line.unit_price.amount * line.quantity, invoice.currency)
        if line.kind == LineKind.ENTITLEMENT and line.amount.amount:
            raise InvalidInput("Entitlement lines cost nothing.", code="entitlement_line_priced")
        line.save(update_fields=["amount", "amount_currency"])
    _total_refresh(invoice)
    return invoice


def _number_next(year: int) -> str:
    """The next number of `year`, under the year's InvoiceSequence row lock (held until
    commit, so a rolled-back issue gives its number back: no gaps)."""
    sequence = InvoiceSequence.objects.select_for_update().filter(year=year).first()
    if sequence is None:
        # ON CONFLICT DO NOTHING: the first issue of a year, possibly racing another.
        InvoiceSequence.objects.bulk_create([InvoiceSequence(year=year)], ignore_conflicts=True)
        sequence = InvoiceSequence.objects.select_for_update().get(year=year)
    sequence.last += 1
    sequence.save(update_fields=["last"])
    return f"INV-{year}-{sequence.last:06d}"


@transaction.atomic
def invoice_issue(*, invoice: Invoice, at: dt.datetime | None = None) -> Invoice:
    """Issues a draft: total = sum of lines, then the next number of the issue year (UTC).

    Locks the invoice, then the year's InvoiceSequence row until commit, so concurrent issues
    get distinct consecutive numbers and a rolled-back issue leaves no gap. Raises Conflict
    (`invoice_immutable`) if already issued, InvalidInput (`invoice_empty`) without lines."""
    invoice = _invoice_lock(invoice)
    _refuse_unless_draft(invoice)
    if not invoice.lines.exists():
        raise InvalidInput("An invoice needs at least one line.", code="invoice_empty")
    at = (at or timezone.now()).astimezone(dt.UTC)
    invoice.total = _lines_total(invoice)
    invoice.number = _number_next(at.year)
    invoice.status = InvoiceStatus.ISSUED
    invoice.issued_at = at
    invoice.save(update_fields=["number", "status", "issued_at", "total", "currency"])
    return invoice


def _invoice_issue_new(*, customer: Customer, lines: list[LineDraft], at, **fields) -> Invoice:
    invoice = invoice_create(customer=customer, lines=lines, **fields)
    return invoice_issue(invoice=invoice, at=at)


def _charge(invoice: Invoice, provider: PaymentProvider, what: str) -> Payment:
    """Charges through `provider` and records the payment; a decline raises PaymentFailed
    (the caller's transaction rolls back: nothing of the attempt remains)."""
    result = provider.charge(invoice)
    if not result.succeeded:
        reason = result.message or "the payment provider declined it"
        raise PaymentFailed(
            f"The payment of {invoice.total} for {what} failed: {reason} "
            "Nothing was charged or added.",
            details={"provider": provider.name, "amount": str(invoice.total.amount)},
        )
    payment = Payment(
        invoice=invoice,
        provider=provider.name,
        reference=result.reference,
        amount=invoice.total,
        status=PaymentStatus.SUCCEEDED,
        message=result.message,
    )
    payment.full_clean()
    payment.save()
    return payment


def _mark_paid(invoice: Invoice, at: dt.datetime) -> Invoice:
    invoice.status = InvoiceStatus.PAID
    invoice.paid_at = at
    invoice.save(update_fields=["status", "paid_at"])
    return invoice


@transaction.atomic
def invoice_pay(
    *, invoice: Invoice, provider: PaymentProvider | None = None, at: dt.datetime | None = None
) -> Invoice:
    """Charges an issued invoice through `provider` (default: the configured one) and marks it
    paid. Locks the invoice. Raises Conflict unless issued, PaymentFailed on a decline (the
    invoice stays issued)."""
    invoice = _invoice_lock(invoice)
    if invoice.status != InvoiceStatus.ISSUED:
        raise Conflict(
            f"Only an issued invoice can be paid; {invoice} is {invoice.status}.",
            code="invoice_not_payable",
        )
    _charge(invoice, provider or payment_provider_default(), f"invoice {invoice.number}")
    return _mark_paid(invoice, at or timezone.now())


@transaction.atomic
def invoice_void(*, invoice: Invoice, reason: str, at: dt.datetime | None = None) -> Invoice:
    """Voids an issued or paid invoice: the correction of an issued invoice (it keeps its
    number). Top-up grants it paid for are voided with it. Locks the invoice. Raises Conflict
    for a draft (delete it instead) or an invoice already void; InvalidInput without a reason."""
    invoice = _invoice_lock(invoice)
    if not (reason or "").strip():
        raise InvalidInput("Say why the invoice is voided.", code="reason_required")
    if invoice.status == InvoiceStatus.VOID:
        raise Conflict(f"Invoice {invoice.number} is already void.", code="invoice_void")
    if invoice.status == InvoiceStatus.DRAFT:
        raise Conflict("A draft has no number; delete it instead.", code="invoice_draft")
    at = at or timezone.now()
    invoice.status = InvoiceStatus.VOID
    invoice.voided_at = at
    invoice.void_reason = reason.strip()[:500]
    invoice.save(update_fields=["status", "voided_at", "void_reason"])
    for line in invoice.lines.filter(grant__isnull=False).select_related("grant"):
        if line.grant.voided_at is None:
            customer_services.grant_void(grant=line.grant, at=at)
    return invoice


# --- subscriptions --------------------------------------------------------------------------


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
    _invoice_issue_new(
        customer=subscription.customer,
        purpose=InvoicePurpose.PERIOD,
        subscription=subscription,
        period_start=start,
        period_end=end,
        lines=[plan_line(plan, start, end), *entitlement_lines(subscription.customer, at=start)],
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
    if subscription.status != SubscriptionStatus.ACTIVE:
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


def _period_at(subscription: Subscription, at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    if subscription.current_period_start <= at < subscription.current_period_end:
        return subscription.current_period_start, subscription.current_period_end
    window = billing_period_at(subscription.started_at, subscription.plan.interval, at)
    return window.start, window.end


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
    return line.unit_price if line else subscription.plan.price


def _proration(subscription: Subscription, plan: Plan, at: dt.datetime) -> ProrationPreview:
    start, end = _period_at(subscription, at)
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
    if plan.rank <= subscription.plan.rank:
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
    subscription = _subscription_lock(subscription.pk)
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
    if plan.rank <= subscription.plan.rank:
        subscription = customer_services.subscription_schedule_plan(
            subscription=subscription, plan=plan
        )
        return PlanChange(subscription=subscription, invoice=None, scheduled=True)
    preview = _proration(subscription, plan, at)
    subscription = customer_services.subscription_set_plan(subscription=subscription, plan=plan)
    invoice = _invoice_issue_new(
        customer=subscription.customer,
        purpose=InvoicePurpose.PLAN_CHANGE,
        subscription=subscription,
        period_start=at,
        period_end=preview.period_end,
        lines=[*preview.lines, *entitlement_lines(subscription.customer, at=at)],
        at=at,
    )
    return PlanChange(subscription=subscription, invoice=invoice, scheduled=False)


def _subscription_lock(pk: int) -> Subscription:
    subscription = Subscription.objects.select_for_update().get(pk=pk)
    # Related rows are read after the lock, unlocked (FOR UPDATE would lock joined rows too).
    subscription.plan = Plan.objects.get(pk=subscription.plan_id)
    subscription.customer = Customer.objects.get(pk=subscription.customer_id)
    return subscription


# --- period close ---------------------------------------------------------------------------


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
    subscription = _subscription_lock(subscription_id)
    if subscription.status != SubscriptionStatus.ACTIVE or subscription.current_period_end > now:
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
            invoice = _invoice_issue_new(
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
    invoice = _invoice_issue_new(
        customer=customer,
        purpose=InvoicePurpose.PERIOD,
        subscription=subscription,
        period_start=next_start,
        period_end=next_end,
        lines=[plan_line(plan, next_start, next_end), *usage_lines, *overage],
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
        Subscription.objects.filter(status=SubscriptionStatus.ACTIVE, current_period_end__lte=now)
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


# --- top-ups --------------------------------------------------------------------------------


def _idempotency_key_clean(key) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidInput("An idempotency key is required.", code="invalid_idempotency_key")
    if len(key) > 255:
        raise InvalidInput(
            "The idempotency key is at most 255 characters.", code="invalid_idempotency_key"
        )
    try:
        bounds.url_safe_check(key)  # it names the receipt's page
    except bounds.Refused as refused:
        raise InvalidInput(
            f"The idempotency key {refused}.",
            code="invalid_idempotency_key",
            details={"idempotency_key": [f"The idempotency key {refused}."]},
        ) from None
    return key


def _pack_check(customer: Customer, pack: TopUpPack, subscription: Subscription | None) -> None:
    if not pack.active:
        raise InvalidInput(f"The top-up {pack.name!r} is not on sale.", code="pack_inactive")
    if subscription is None:
        raise InvalidInput(
            "Top-ups are sold to customers with an active subscription.", code="no_subscription"
        )
    offered_on = set(pack.plans.values_list("pk", flat=True))
    if offered_on and subscription.plan_id not in offered_on:
        raise InvalidInput(
            f"The top-up {pack.name!r} is not offered on the {subscription.plan.name} plan.",
            code="pack_not_offered",
        )
    if str(pack.price.currency) != customer.currency:
        raise InvalidInput(
            f"The top-up {pack.name!r} is priced in {pack.price.currency}; this customer is "
            f"billed in {customer.currency}.",
            code="currency_mismatch",
        )


@transaction.atomic
def topup_purchase(
    *,
    customer: Customer,
    pack: TopUpPack,
    idempotency_key: str,
    provider: PaymentProvider | None = None,
    at: dt.datetime | None = None,
) -> TopUpPurchase:
    """Buys a top-up pack: an invoice charged through `provider` (default: the configured one)
    and marked paid, and the grant (source topup; expiry from the pack, `period_end` packs
    expire with the current billing period), all in one transaction.

    Idempotent on (customer, idempotency_key): the customer row is locked first, so a double
    submit waits for the first and gets the same purchase back; one charge, one grant (a
    unique constraint backs this up). The key reused for another pack raises Conflict
    (`idempotency_conflict`). A declined payment raises PaymentFailed and leaves nothing: no
    grant, no invoice, no number used. Raises InvalidInput (`pack_inactive`,
    `pack_not_offered`, `currency_mismatch`, `no_subscription`, `invalid_idempotency_key`)."""
    key = _idempotency_key_clean(idempotency_key)
    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    existing = (
        TopUpPurchase.objects.filter(customer=customer, idempotency_key=key)
        .select_related("invoice", "grant", "pack")
        .first()
    )
    if existing is not None:
        if existing.pack_id != pack.pk:
            raise Conflict(
                f"The idempotency key {key!r} was already used to buy {existing.pack.name}.",
                code="idempotency_conflict",
                details={"idempotency_key": key},
            )
        return existing
    at = (at or timezone.now()).astimezone(dt.UTC)
    subscription = customer_services.subscription_active(customer)
    _pack_check(customer, pack, subscription)
    _, period_end = _period_at(subscription, at)
    expires_at = customer_services.grant_expiry_for(pack, at=at, period_end=period_end)
    feature = pack.feature
    grant = customer_services.grant_create(
        customer=customer,
        feature=feature,
        quantity=pack.quantity,
        source=GrantSource.TOPUP,
        reason=f"Top-up purchase: {pack.name}",
        effective_at=at,
        expires_at=expires_at,
        topup_pack=pack,
    )
    expiry = f"until {day_text(expires_at)}" if expires_at else "no expiry"
    invoice = invoice_create(
        customer=customer,
        purpose=InvoicePurpose.TOPUP,
        subscription=subscription,
        lines=[
            LineDraft(
                kind=LineKind.TOPUP,
                description=(
                    f"Top-up: {pack.name} ({quantity_text(pack.quantity, feature.unit)} of "
                    f"{feature.name}, {expiry})"
                ),
                unit_price=pack.price,
                feature_id=feature.pk,
                grant_id=grant.pk,
            )
        ],
    )
    # Charged before numbering, so the numbering lock is not held while a gateway answers.
    _charge(invoice, provider or payment_provider_default(), pack.name)
    invoice = _mark_paid(invoice_issue(invoice=invoice, at=at), at)
    purchase = TopUpPurchase(
        customer=customer, idempotency_key=key, pack=pack, invoice=invoice, grant=grant
    )
    try:
        with transaction.atomic():
            purchase.save()
    except IntegrityError:
        # Only if a writer skipped the customer lock; its purchase stands, this one rolls back.
        raise Conflict(
            f"A purchase with the idempotency key {key!r} is already in progress.",
            code="idempotency_conflict",
        ) from None
    return purchase
