"""Invoices: line drafts (what previews show and invoices copy), drafts, gapless numbering per
year, issue and void. An invoice is immutable once issued; a void plus a new invoice corrects it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from djmoney.money import Money

from billing.models import (
    Invoice,
    InvoiceLine,
    InvoicePurpose,
    InvoiceSequence,
    InvoiceStatus,
    LineKind,
)
from catalog.models import FeatureKind, Plan
from core.errors import Conflict, InvalidInput
from core.text import money_round, period_text, quantity_text
from customers import services as customer_services
from customers.engine import Entitlement, entitlements_resolve
from customers.engine.arithmetic import grant_units
from customers.models import Customer, Subscription

ONE = Decimal("1")


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


def plan_line(
    plan: Plan, start: dt.datetime, end: dt.datetime, price: Money | None = None
) -> LineDraft:
    """The plan's line for a period, at `price` (the subscriber's plan version's; default the
    plan's price, which new subscribers pay)."""
    interval = "yearly" if plan.interval == "year" else "monthly"
    return LineDraft(
        kind=LineKind.PLAN,
        description=f"{plan.name} plan, {interval} ({period_text(start, end)})",
        unit_price=plan.price if price is None else price,
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


def invoice_lock(invoice: Invoice) -> Invoice:
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
    invoice = invoice_lock(invoice)
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
    invoice = invoice_lock(invoice)
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
    """Issues a draft: total = sum of lines, then the next number of the issue year (UTC); due
    BILLING_GRACE_DAYS later and due for collection at once (payments.invoice_collect charges
    it; callers queue that for after commit, else the beat's `payments_collect` does).

    Locks the invoice, then the year's InvoiceSequence row until commit, so concurrent issues
    get distinct consecutive numbers and a rolled-back issue leaves no gap. Raises Conflict
    (`invoice_immutable`) if already issued, InvalidInput (`invoice_empty`) without lines."""
    invoice = invoice_lock(invoice)
    _refuse_unless_draft(invoice)
    if not invoice.lines.exists():
        raise InvalidInput("An invoice needs at least one line.", code="invoice_empty")
    at = (at or timezone.now()).astimezone(dt.UTC)
    invoice.total = _lines_total(invoice)
    invoice.number = _number_next(at.year)
    invoice.status = InvoiceStatus.ISSUED
    invoice.issued_at = at
    invoice.due_at = at + dt.timedelta(days=settings.BILLING_GRACE_DAYS)
    invoice.next_payment_at = at
    invoice.save(
        update_fields=[
            "number",
            "status",
            "issued_at",
            "due_at",
            "next_payment_at",
            "total",
            "currency",
        ]
    )
    return invoice


def invoice_issue_new(*, customer: Customer, lines: list[LineDraft], at, **fields) -> Invoice:
    invoice = invoice_create(customer=customer, lines=lines, **fields)
    return invoice_issue(invoice=invoice, at=at)


@transaction.atomic
def invoice_void(*, invoice: Invoice, reason: str, at: dt.datetime | None = None) -> Invoice:
    """Voids an issued or paid invoice: the correction of an issued invoice (it keeps its
    number). Top-up grants it paid for are voided with it. Locks the invoice. Raises Conflict
    for a draft (delete it instead) or an invoice already void; InvalidInput without a reason."""
    invoice = invoice_lock(invoice)
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
