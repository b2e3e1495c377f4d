"""Everything that reads billing for a page or an API answer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Prefetch, QuerySet
from django.utils import timezone
from djmoney.money import Money

from core.errors import NotFound
from core.roles import is_product_manager, is_support
from customers.models import Customer

from .models import (
    Invoice,
    InvoiceEmail,
    InvoiceEmailKind,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    PaymentKind,
    PaymentStatus,
)


def invoice_list(*, customer: Customer, include_drafts: bool = False) -> QuerySet[Invoice]:
    """The customer's invoices, newest first (drafts only on request: staff)."""
    invoices = Invoice.objects.filter(customer=customer).select_related("customer")
    if not include_drafts:
        invoices = invoices.exclude(status=InvoiceStatus.DRAFT)
    return invoices.order_by("-issued_at", "-pk")


def _with_lines(invoices: QuerySet[Invoice]) -> QuerySet[Invoice]:
    lines = InvoiceLine.objects.select_related("feature", "plan").order_by("position", "pk")
    return invoices.select_related("customer", "subscription").prefetch_related(
        Prefetch("lines", queryset=lines), "payments"
    )


def invoice_get(*, number: str) -> Invoice:
    """One issued invoice by number, with its lines (in order) and payments. Raises NotFound."""
    invoice = _with_lines(Invoice.objects.filter(number=number)).first()
    if invoice is None:
        raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
    return invoice


def invoices_visible_to(user) -> QuerySet[Invoice]:
    """Staff (Support, Product managers, superusers) see every invoice; an end customer only
    their own customer's issued ones; anyone else none."""
    if is_support(user) or is_product_manager(user):
        return Invoice.objects.all()
    customer_id = _customer_id_of(user)
    if customer_id is None:
        return Invoice.objects.none()
    return Invoice.objects.filter(customer_id=customer_id).exclude(status=InvoiceStatus.DRAFT)


def _customer_id_of(user) -> int | None:
    if not user.is_authenticated:
        return None
    link = getattr(user, "customer_user", None)  # none: RelatedObjectDoesNotExist
    return link.customer_id if link else None


def invoice_get_for_user(*, user, number: str) -> Invoice:
    """The invoice `number` if `user` may see it; NotFound otherwise (another customer's
    invoice does not exist as far as they know)."""
    invoice = _with_lines(invoices_visible_to(user).filter(number=number)).first()
    if invoice is None:
        raise NotFound(f"No invoice {number!r}.", code="invoice_not_found")
    return invoice


@dataclass
class LineGroup:
    """A charged line with the entitlement lines listed under it (`line` is None for
    entitlement lines that no plan line precedes, e.g. on a closing invoice)."""

    line: InvoiceLine | None
    included: list[InvoiceLine] = field(default_factory=list)


def invoice_line_groups(invoice: Invoice) -> list[LineGroup]:
    """The lines in order, each entitlement line under the plan (or proration) line before it."""
    groups: list[LineGroup] = []
    anchor: LineGroup | None = None
    for line in invoice.lines.all():
        if line.kind == LineKind.ENTITLEMENT:
            if anchor is None:
                anchor = LineGroup(line=None)
                groups.append(anchor)
            anchor.included.append(line)
            continue
        group = LineGroup(line=line)
        groups.append(group)
        if line.kind in (LineKind.PLAN, LineKind.PRORATION):
            anchor = group
    return groups


@dataclass(frozen=True)
class InvoiceStanding:
    """Where an invoice stands for its reader: the badge, what was paid, what is still due."""

    label: str
    css: str
    overdue: bool
    paid_amount: Money | None
    amount_due: Money
    refunded: Money | None


def invoice_standing(invoice: Invoice, *, now: dt.datetime | None = None) -> InvoiceStanding:
    """From the invoice and its (prefetched) payments; no query of its own."""
    now = now or timezone.now()
    zero = Money(0, invoice.currency)
    succeeded = [p for p in invoice.payments.all() if p.status == PaymentStatus.SUCCEEDED]
    paid = next((p.amount for p in succeeded if p.kind == PaymentKind.CHARGE), None)
    refunded = next((p.amount for p in succeeded if p.kind == PaymentKind.REFUND), None)
    overdue = invoice.is_outstanding and invoice.due_at is not None and invoice.due_at <= now
    if invoice.status == InvoiceStatus.PAID:
        label, css, due = "Paid", "paid", zero
    elif invoice.status == InvoiceStatus.VOID:
        label, css, due = ("Void, refunded" if refunded else "Void"), "void", zero
    elif invoice.status == InvoiceStatus.DRAFT:
        label, css, due = "Draft", "draft", invoice.total
    else:
        label = "Overdue" if overdue else ("Payment failed" if invoice.payment_error else "Due")
        css, due = ("overdue" if overdue or invoice.payment_error else "issued"), invoice.total
    if paid is not None and invoice.status == InvoiceStatus.PAID and paid.amount == 0:
        paid = None
    return InvoiceStanding(label, css, overdue, paid, due, refunded)


def invoice_page_context(invoice: Invoice) -> dict:
    """What the invoice document template needs (billing/_invoice_document.html)."""
    return {
        "invoice": invoice,
        "groups": invoice_line_groups(invoice),
        "standing": invoice_standing(invoice),
        "seller": settings.BILLING_SELLER,
    }


def invoices_outstanding(*, customer: Customer) -> QuerySet[Invoice]:
    """The customer's issued, unpaid invoices, oldest first: what the dashboard asks to pay."""
    return (
        Invoice.objects.filter(customer=customer, status=InvoiceStatus.ISSUED)
        .select_related("customer")
        .order_by("issued_at", "pk")
    )


def receipts_of(*, customer: Customer) -> QuerySet[InvoiceEmail]:
    """The receipts emailed to the customer, newest first, with their invoice."""
    return (
        InvoiceEmail.objects.filter(invoice__customer=customer, kind=InvoiceEmailKind.RECEIPT)
        .select_related("invoice")
        .order_by("-created_at", "-pk")
    )
