"""Invoice emails: a receipt for every paid invoice and a notice for every declined charge.

Written as an outbox row (InvoiceEmail) in the transaction that pays or records the decline,
and sent through the platform's one outbox (core.outbox: the claim, the retries, the sweep,
what "sent once" means) by a Celery task queued when it commits; `invoice_emails_sweep` (beat,
every minute) queues again whatever is still pending. Each message carries a Message-ID
derived from its row, so a receiver can drop a duplicate.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing.models import (
    Invoice,
    InvoiceEmail,
    InvoiceEmailKind,
    InvoiceEmailStatus,
    InvoiceStatus,
    Payment,
)
from core.outbox import Outbox, Undeliverable, message_id
from core.text import day_text, money_text
from customers.notifications import give_up_after, sweep_delay

logger = logging.getLogger(__name__)

SUBJECTS = {
    InvoiceEmailKind.RECEIPT: "Receipt for invoice {number}: {total} paid",
    InvoiceEmailKind.PAYMENT_FAILED: "Payment of invoice {number} failed: please pay {total}",
}

# billing/tasks.py attaches the task that sends one row.
OUTBOX = Outbox(
    model=InvoiceEmail,
    done=InvoiceEmailStatus.SENT,
    done_at="sent_at",
    sweep_delay=sweep_delay,
    give_up_after=give_up_after,
    related=("invoice", "invoice__customer", "payment"),
)


def invoice_email_record(
    *, invoice: Invoice, kind: str, payment: Payment | None = None
) -> InvoiceEmail | None:
    """Records the email in the caller's transaction (insert-or-nothing: one receipt per
    invoice, one notice per declined payment) and queues its send for after commit."""
    now = timezone.now()
    email = InvoiceEmail(
        invoice=invoice,
        payment=payment,
        kind=kind,
        to=invoice.customer.alert_recipients,
        created_at=now,
        next_attempt_at=now + sweep_delay(),  # the task queued on commit goes first
    )
    try:
        with transaction.atomic():
            email.save(force_insert=True)
    except IntegrityError:
        return None
    OUTBOX.queue_on_commit([email.pk])
    return email


def invoice_page_url(invoice: Invoice) -> str:
    """The invoice on the customer's dashboard, absolute on SITE_URL."""
    path = reverse("dashboard:invoice_detail", args=[invoice.number])
    return settings.SITE_URL.rstrip("/") + path


def invoice_email_context(email: InvoiceEmail) -> dict:
    invoice = email.invoice
    payment = email.payment
    return {
        "kind": email.kind,
        "customer_name": invoice.customer.name,
        "number": invoice.number,
        "total": money_text(invoice.total),
        "issued": day_text(invoice.issued_at),
        "due": day_text(invoice.due_at) if invoice.due_at else "",
        "paid": day_text(invoice.paid_at) if invoice.paid_at else "",
        "still_open": invoice.status == InvoiceStatus.ISSUED,
        "reason": (payment.message if payment else "") or invoice.payment_error,
        "retry_hours": settings.BILLING_PAYMENT_RETRY_HOURS,
        "reference": payment.reference if payment else "",
        "invoice_url": invoice_page_url(invoice),
        "lines": [
            (line.description, money_text(line.amount))
            for line in invoice.lines.all()
            if line.kind != "entitlement"
        ],
        "seller": settings.BILLING_SELLER,
    }


def invoice_email_message(email: InvoiceEmail, recipients: list[str]) -> EmailMultiAlternatives:
    context = invoice_email_context(email)
    subject = SUBJECTS[email.kind].format(number=context["number"], total=context["total"])
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string(f"billing/email/{email.kind}.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        headers={
            "Message-ID": message_id("invoice-email", email.pk, email.created_at),
            "X-Entitlements-Invoice": email.invoice.number,
        },
    )
    message.attach_alternative(
        render_to_string(f"billing/email/{email.kind}.html", context), "text/html"
    )
    return message


def invoice_email_send(*, email_id: int) -> bool:
    """Sends one pending invoice email through the outbox (core.outbox.Outbox.send); True if
    sent now. A failure is recorded, retried by the task and then the sweep, and re-raised."""
    return OUTBOX.send(email_id, _email_deliver)


def _email_deliver(email: InvoiceEmail) -> dict:
    recipients = email.to or email.invoice.customer.alert_recipients
    if not recipients:
        raise Undeliverable("No recipient: the customer has no email address.")
    invoice_email_message(email, recipients).send()
    return {"to": recipients}
