"""Payments: collecting every issued invoice through the payment provider, dunning, refunds.

Every issued invoice is charged at issue (`invoice_issue` queues `invoice_collect` for after
its commit). Each attempt is a Payment row, and the provider is called with an idempotency key
derived from the invoice and the attempt (`INV-2026-000042:charge:1`): the attempt number only
grows once a decline is committed, so a retry after a crash (the provider charged, our commit
never happened) sends the same key again and the provider answers the first charge instead of
charging twice. The invoice row is locked for the whole attempt, so two collections of one
invoice (the beat's retry and the customer's "Pay now") charge once: the second finds it paid.

A decline keeps the provider's reason on the invoice, schedules a retry
(settings.BILLING_PAYMENT_RETRY_HOURS; beat runs `payments_collect`) and emails the customer a
link to pay from the dashboard; unpaid past its due date (issue + BILLING_GRACE_DAYS) the
subscription is past due. Paying the last overdue invoice makes it active again.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import (
    Invoice,
    InvoiceEmailKind,
    InvoiceStatus,
    Payment,
    PaymentKind,
    PaymentStatus,
)
from billing.providers import PaymentProvider, PaymentResult, payment_provider_default
from core.errors import Conflict, DomainError, InvalidInput, PaymentFailed
from customers import services as customer_services
from customers.models import SUBSCRIPTION_CURRENT, Subscription, SubscriptionStatus

from .emails import invoice_email_record
from .invoices import invoice_issue_new, invoice_lock, invoice_void

logger = logging.getLogger(__name__)


def payment_key(invoice: Invoice, kind: str, attempt: int) -> str:
    """The provider's idempotency key of an invoice's `attempt`-th charge or refund."""
    return f"{invoice.number}:{kind}:{attempt}"


def _attempt_next(invoice: Invoice, kind: str) -> int:
    return invoice.payments.filter(kind=kind).count() + 1


def _payment_record(
    invoice: Invoice, provider: PaymentProvider, kind: str, key: str, result: PaymentResult, at
) -> Payment:
    payment = Payment(
        invoice=invoice,
        kind=kind,
        provider=provider.name,
        idempotency_key=key,
        reference=result.reference[:255],
        amount=invoice.total,
        status=PaymentStatus.SUCCEEDED if result.succeeded else PaymentStatus.FAILED,
        message=(result.message or "")[:500],
        settled_at=at,
    )
    payment.full_clean(exclude=["invoice"])
    payment.save()
    return payment


def _decline_reason(result: PaymentResult) -> str:
    return result.message or "The payment provider declined the charge."


# --- charging -----------------------------------------------------------------------------


def payment_charge(invoice: Invoice, provider: PaymentProvider, what: str, key: str) -> Payment:
    """Charges a top-up's draft invoice inside the purchase's transaction and records the
    payment; a decline raises PaymentFailed (the caller's transaction rolls back: nothing of
    the attempt remains, so the purchase key gives the same idempotency key again)."""
    result = provider.charge(invoice, amount=invoice.total, idempotency_key=key)
    if not result.succeeded:
        raise PaymentFailed(
            f"The payment of {invoice.total} for {what} failed: {_decline_reason(result)} "
            "Nothing was charged or added.",
            details={"provider": provider.name, "amount": str(invoice.total.amount)},
        )
    return _payment_record(invoice, provider, PaymentKind.CHARGE, key, result, timezone.now())


def invoice_mark_paid(invoice: Invoice, at: dt.datetime) -> Invoice:
    """Marks a locked, issued invoice paid (its charge recorded) and queues its receipt; a
    past-due subscription with nothing else overdue is active again."""
    invoice.status = InvoiceStatus.PAID
    invoice.paid_at = at
    invoice.payment_error = ""
    invoice.next_payment_at = None
    invoice.save(update_fields=["status", "paid_at", "payment_error", "next_payment_at"])
    invoice_email_record(invoice=invoice, kind=InvoiceEmailKind.RECEIPT)
    if invoice.subscription_id:
        subscription_standing_refresh(subscription_id=invoice.subscription_id, at=at)
    return invoice


@dataclass(frozen=True)
class Collection:
    invoice: Invoice
    payment: Payment | None  # None when nothing was charged (already paid, zero total)

    @property
    def paid(self) -> bool:
        return self.invoice.status == InvoiceStatus.PAID


def _refuse_unless_payable(invoice: Invoice) -> None:
    if invoice.status == InvoiceStatus.ISSUED:
        return
    if invoice.status == InvoiceStatus.PAID:
        message = f"Invoice {invoice.number} is already paid."
    elif invoice.status == InvoiceStatus.VOID:
        message = f"Invoice {invoice.number} is void: there is nothing to pay."
    else:
        message = "A draft invoice cannot be paid; issue it first."
    raise Conflict(
        message,
        code="invoice_not_payable",
        details={"number": invoice.number, "status": invoice.status},
    )


@transaction.atomic
def invoice_collect(
    *, invoice: Invoice, provider: PaymentProvider | None = None, at: dt.datetime | None = None
) -> Collection:
    """Charges an issued invoice's total through `provider` (default: the configured one).

    Locks the invoice for the attempt (a concurrent collection waits, then finds it paid).
    Paid: a succeeded Payment, the invoice paid, its receipt queued, a past-due subscription
    back to active when nothing else is overdue. Declined: a failed Payment with the provider's
    reason, kept on the invoice too; a retry in BILLING_PAYMENT_RETRY_HOURS; the customer
    emailed; the subscription past due once the invoice is past its due date. A total of zero
    or less is paid without calling the provider. Raises Conflict (`invoice_not_payable`) for
    a draft, paid or void invoice."""
    at = (at or timezone.now()).astimezone(dt.UTC)
    invoice = invoice_lock(invoice)
    _refuse_unless_payable(invoice)
    if invoice.total.amount <= Decimal("0"):
        return Collection(invoice_mark_paid(invoice, at), None)
    provider = provider or payment_provider_default()
    key = payment_key(invoice, PaymentKind.CHARGE, _attempt_next(invoice, PaymentKind.CHARGE))
    result = provider.charge(invoice, amount=invoice.total, idempotency_key=key)
    payment = _payment_record(invoice, provider, PaymentKind.CHARGE, key, result, at)
    if result.succeeded:
        return Collection(invoice_mark_paid(invoice, at), payment)
    invoice.payment_error = _decline_reason(result)[:500]
    invoice.next_payment_at = at + dt.timedelta(hours=settings.BILLING_PAYMENT_RETRY_HOURS)
    invoice.save(update_fields=["payment_error", "next_payment_at"])
    invoice_email_record(invoice=invoice, kind=InvoiceEmailKind.PAYMENT_FAILED, payment=payment)
    if invoice.subscription_id and invoice.due_at and invoice.due_at <= at:
        subscription_standing_refresh(subscription_id=invoice.subscription_id, at=at)
    return Collection(invoice, payment)


def invoice_pay(
    *, invoice: Invoice, provider: PaymentProvider | None = None, at: dt.datetime | None = None
) -> Invoice:
    """The customer's "Pay now": collects the invoice at once (see invoice_collect). Raises
    Conflict (`invoice_not_payable`) unless it is issued, PaymentFailed when declined (the
    decline is recorded and the invoice stays issued; code `payment_provider_unavailable` when
    the provider did not answer: nothing was recorded, and a retry sends the same key)."""
    try:
        collection = invoice_collect(invoice=invoice, provider=provider, at=at)
    except DomainError:
        raise
    except Exception:
        logger.exception("Paying invoice %s: the payment provider failed", invoice.pk)
        raise PaymentFailed(
            "The payment provider did not answer. Please try again in a few minutes: the "
            "invoice will not be charged twice.",
            code="payment_provider_unavailable",
        ) from None
    if not collection.paid:
        invoice = collection.invoice
        raise PaymentFailed(
            f"The payment of {invoice.total} for invoice {invoice.number} failed: "
            f"{invoice.payment_error} The invoice is still open.",
            details={"number": invoice.number, "amount": str(invoice.total.amount)},
        )
    return collection.invoice


def invoice_collect_after_commit(invoice: Invoice) -> None:
    """Charges a just-issued invoice once the issuing transaction commits (no lock of the
    issue held while the provider answers). A failure is logged; the beat retries it."""
    transaction.on_commit(lambda: _collect_quietly(invoice.pk))


def invoice_issue_charged(*, customer, lines, at, **fields) -> Invoice:
    """A new invoice with `lines`, issued at `at` and charged once this transaction commits."""
    invoice = invoice_issue_new(customer=customer, lines=lines, at=at, **fields)
    invoice_collect_after_commit(invoice)
    return invoice


def _collect_quietly(invoice_id: int) -> None:
    try:
        invoice_collect(invoice=Invoice(pk=invoice_id))
    except Conflict:
        pass  # paid meanwhile (a top-up is paid in its own transaction), or voided
    except Exception:
        logger.exception("Collecting invoice %s failed; the beat retries it", invoice_id)


# --- dunning --------------------------------------------------------------------------------


def subscription_standing_refresh(*, subscription_id: int, at: dt.datetime | None = None):
    """Past due while an issued invoice of the subscription is unpaid past its due date, else
    active (customers.services.subscription_payment_standing writes it)."""
    at = at or timezone.now()
    overdue = Invoice.objects.filter(
        subscription_id=subscription_id, status=InvoiceStatus.ISSUED, due_at__lte=at
    ).exists()
    subscription = Subscription.objects.filter(
        pk=subscription_id, status__in=SUBSCRIPTION_CURRENT
    ).first()
    if subscription is None or (subscription.status == SubscriptionStatus.PAST_DUE) == overdue:
        return subscription
    return customer_services.subscription_payment_standing(
        subscription=subscription, past_due=overdue
    )


@dataclass
class CollectionRun:
    paid: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    past_due: int = 0  # subscriptions this run made past due

    def as_dict(self) -> dict:
        return {
            "paid": list(self.paid),
            "declined": list(self.declined),
            "errors": dict(self.errors),
            "past_due": self.past_due,
        }


def payments_collect(*, now: dt.datetime | None = None, limit: int = 500) -> CollectionRun:
    """The beat's dunning run: retries every issued invoice whose next try is due (each in its
    own transaction), then marks past due the subscriptions with an invoice unpaid past its
    due date. Safe to run twice or concurrently (each invoice is locked while charged)."""
    now = (now or timezone.now()).astimezone(dt.UTC)
    run = CollectionRun()
    past_due = Subscription.objects.filter(status=SubscriptionStatus.PAST_DUE)
    past_due_before = set(past_due.values_list("pk", flat=True))
    due = (
        Invoice.objects.filter(status=InvoiceStatus.ISSUED, next_payment_at__lte=now)
        .order_by("next_payment_at", "pk")
        .values_list("pk", "number")[:limit]
    )
    for pk, number in list(due):
        try:
            collection = invoice_collect(invoice=Invoice(pk=pk), at=now)
        except Conflict:
            continue  # paid or voided since the query
        except Exception as error:  # the provider is down: the next run tries again
            logger.exception("Collecting invoice %s failed", number)
            run.errors[number] = f"{type(error).__name__}: {error}"[:500]
            continue
        (run.paid if collection.paid else run.declined).append(number)
    overdue = (
        Invoice.objects.filter(
            status=InvoiceStatus.ISSUED,
            due_at__lte=now,
            subscription__status=SubscriptionStatus.ACTIVE,
        )
        .values_list("subscription_id", flat=True)
        .distinct()
    )
    for subscription_id in list(overdue):
        # Invoices issued without a charge (the provider was down) or never retried.
        with transaction.atomic():
            subscription_standing_refresh(subscription_id=subscription_id, at=now)
    run.past_due = len(set(past_due.values_list("pk", flat=True)) - past_due_before)
    return run


# --- refunds ------------------------------------------------------------------------------


def invoice_refund_void(
    *,
    invoice: Invoice,
    reason: str,
    provider: PaymentProvider | None = None,
    at: dt.datetime | None = None,
) -> Invoice:
    """Voids an invoice, first refunding its charge through the provider when it was paid
    (support's "Void and refund"). The refund is idempotent on the invoice
    (`INV-…:refund:n`; n grows only with a committed decline). Locks the invoice.

    Raises InvalidInput (`reason_required`), Conflict (`invoice_void`: already void, so a
    second click is a clear 409; `invoice_draft`), PaymentFailed when the provider refuses the
    refund (the refusal is recorded; the invoice stays paid)."""
    if not (reason or "").strip():
        raise InvalidInput("Say why the invoice is voided.", code="reason_required")
    at = (at or timezone.now()).astimezone(dt.UTC)
    refused = None
    with transaction.atomic():
        invoice = invoice_lock(invoice)
        charge = invoice.payments.filter(
            kind=PaymentKind.CHARGE, status=PaymentStatus.SUCCEEDED
        ).first()
        if invoice.status == InvoiceStatus.PAID and charge is not None:
            provider = provider or payment_provider_default()
            key = payment_key(invoice, PaymentKind.REFUND, _attempt_next(invoice, "refund"))
            result = provider.refund(charge, amount=charge.amount, idempotency_key=key)
            _payment_record(invoice, provider, PaymentKind.REFUND, key, result, at)
            if not result.succeeded:
                refused = result.message or "The payment provider refused the refund."
        if refused is None:
            invoice = invoice_void(invoice=invoice, reason=reason, at=at)
            if invoice.subscription_id:
                subscription_standing_refresh(subscription_id=invoice.subscription_id, at=at)
    if refused is not None:
        raise PaymentFailed(
            f"The refund of invoice {invoice.number} failed: {refused} The invoice stays paid.",
            details={"number": invoice.number},
        )
    return invoice
