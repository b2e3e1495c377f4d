"""Payments: charging an issued invoice through the payment provider and marking it paid."""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from billing.models import Invoice, InvoiceStatus, Payment, PaymentStatus
from billing.payments import PaymentProvider, payment_provider_default
from core.errors import Conflict, PaymentFailed

from .invoices import invoice_lock


def payment_charge(invoice: Invoice, provider: PaymentProvider, what: str) -> Payment:
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


def invoice_mark_paid(invoice: Invoice, at: dt.datetime) -> Invoice:
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
    invoice = invoice_lock(invoice)
    if invoice.status != InvoiceStatus.ISSUED:
        raise Conflict(
            f"Only an issued invoice can be paid; {invoice} is {invoice.status}.",
            code="invoice_not_payable",
        )
    payment_charge(invoice, provider or payment_provider_default(), f"invoice {invoice.number}")
    return invoice_mark_paid(invoice, at or timezone.now())
