"""Invoice emails: a receipt for every paid invoice and a notice for every declined charge.

Written as an outbox row (InvoiceEmail) in the transaction that pays or records the decline,
and sent by a Celery task queued when it commits; `invoice_emails_sweep` (beat, every minute)
queues again whatever is still pending, with the same backoff as the usage alerts
(customers.webhooks.retry_at). A row marked sent is never sent again; each message carries a
Message-ID derived from its row, so a receiver can drop a duplicate.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial

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
from billing.text import day_text, money_text
from customers import webhooks
from customers.notifications import sweep_delay

logger = logging.getLogger(__name__)

SUBJECTS = {
    InvoiceEmailKind.RECEIPT: "Receipt for invoice {number}: {total} paid",
    InvoiceEmailKind.PAYMENT_FAILED: "Payment of invoice {number} failed: please pay {total}",
}


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
    transaction.on_commit(partial(_queue_send, email.pk))
    return email


def _queue_send(email_id: int) -> None:
    from billing import tasks  # the tasks import the services

    tasks.enqueue(tasks.invoice_email_send, email_id)


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
    domain = settings.SITE_URL.split("//", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string(f"billing/email/{email.kind}.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        headers={
            "Message-ID": f"<invoice-email-{email.pk}@{domain or 'localhost'}>",
            "X-Entitlements-Invoice": email.invoice.number,
        },
    )
    message.attach_alternative(
        render_to_string(f"billing/email/{email.kind}.html", context), "text/html"
    )
    return message


def invoice_email_send(*, email_id: int) -> bool:
    """Sends one pending invoice email; True if sent now. The row is locked for the send (SKIP
    LOCKED: another worker sending it makes this a no-op) and marked sent in the same
    transaction. A failure keeps the error, counts the attempt, schedules the next try
    (backoff) and re-raises; a day after it was written the row is marked failed."""
    error = None
    with transaction.atomic():
        email = (
            InvoiceEmail.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("invoice", "invoice__customer", "payment")
            .filter(pk=email_id, status=InvoiceEmailStatus.PENDING)
            .first()
        )
        if email is None:
            return False
        now = timezone.now()
        email.attempts += 1
        email.last_attempt_at = now
        recipients = email.to or email.invoice.customer.alert_recipients
        if not recipients:
            email.status = InvoiceEmailStatus.FAILED
            email.last_error = "No recipient: the customer has no email address."
        else:
            try:
                invoice_email_message(email, recipients).send()
            except Exception as exc:
                error = exc
                email.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                email.next_attempt_at = webhooks.retry_at(
                    attempts=email.attempts, now=now, delay=sweep_delay()
                )
                if now - email.created_at >= dt.timedelta(days=1):
                    email.status = InvoiceEmailStatus.FAILED
            else:
                email.status = InvoiceEmailStatus.SENT
                email.sent_at = now
                email.to = recipients
                email.last_error = ""
        email.save()
    if error is not None:
        raise error
    return email.status == InvoiceEmailStatus.SENT


def invoice_emails_due(*, within: dt.timedelta = dt.timedelta(0), limit: int = 500) -> list[int]:
    due = timezone.now() + within
    return list(
        InvoiceEmail.objects.filter(status=InvoiceEmailStatus.PENDING, next_attempt_at__lte=due)
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
