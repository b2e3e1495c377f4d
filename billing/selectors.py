"""Everything that reads billing for a page or an API answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Prefetch, QuerySet

from core.errors import NotFound
from core.roles import is_product_manager, is_support
from customers.models import Customer

from .models import Invoice, InvoiceLine, InvoiceStatus, LineKind, TopUpPurchase


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


def topup_purchase_get(*, customer: Customer, idempotency_key: str) -> TopUpPurchase | None:
    return (
        TopUpPurchase.objects.filter(customer=customer, idempotency_key=idempotency_key)
        .select_related("invoice", "grant", "pack")
        .first()
    )
