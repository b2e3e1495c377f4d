"""Collecting every invoice: charged at issue, once; declines chased (dunning) until the
subscription is past due; receipts; refunds. (Top-up charges: test_topups.py.)"""

import datetime as dt
from decimal import Decimal

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone

from billing.models import (
    Invoice,
    InvoiceEmail,
    InvoiceEmailKind,
    InvoicePurpose,
    InvoiceStatus,
    LineKind,
    Payment,
)
from billing.providers import FailingPaymentProvider
from billing.services.payments import (
    invoice_collect,
    invoice_pay,
    invoice_refund_void,
    payments_collect,
)
from billing.services.period_close import periods_close
from billing.services.subscriptions import subscription_change_plan, subscription_create
from core.errors import Conflict, InvalidInput, PaymentFailed
from customers.engine import entitlement_check, entitlement_consume
from customers.models import Subscription, SubscriptionStatus

from .conftest import at
from .factories import CountingProvider, report_usage

pytestmark = pytest.mark.django_db

TEST_PROVIDER = "billing.providers.TestPaymentProvider"


@pytest.fixture(autouse=True)
def site(settings):
    settings.SITE_URL = "https://entitlements.example"


@pytest.fixture
def collect(django_capture_on_commit_callbacks):
    """Runs the block like a request: its on-commit work (the charge, the emails) runs after."""

    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)

    return run


@pytest.fixture
def declining(settings):
    settings.BILLING_PAYMENT_PROVIDER = TEST_PROVIDER
    settings.BILLING_TEST_PROVIDER_DECLINE = ["acme"]
    return settings


def test_subscribing_charges_the_first_invoice_and_emails_a_receipt(customer, basic, collect):
    collect(subscription_create, customer=customer, plan=basic, at=at(2026, 1, 31))

    invoice = Invoice.objects.get(customer=customer)
    payment = invoice.payments.get()
    assert invoice.status == InvoiceStatus.PAID and invoice.paid_at is not None
    assert (payment.kind, payment.status, payment.amount.amount) == (
        "charge",
        "succeeded",
        Decimal("10.50"),
    )
    assert payment.idempotency_key == f"{invoice.number}:charge:1"
    receipt = InvoiceEmail.objects.get(invoice=invoice)
    assert (receipt.kind, receipt.status) == (InvoiceEmailKind.RECEIPT, "sent")
    [message] = mail.outbox
    assert message.subject == f"Receipt for invoice {invoice.number}: $10.50 paid"
    assert message.to == ["billing@acme.test"]
    assert f"https://entitlements.example/dashboard/invoices/{invoice.number}/" in message.body
    stamp = int(receipt.created_at.timestamp())  # the same at every try of this row
    assert message.extra_headers["Message-ID"] == (
        f"<invoice-email.{receipt.pk}.{stamp}@entitlements.example>"
    )


def test_an_upgrade_charges_the_proration_invoice(customer, basic, pro, collect):
    subscription = collect(subscription_create, customer=customer, plan=basic, at=at(2026, 1, 31))

    change = collect(
        subscription_change_plan, subscription=subscription, plan=pro, at=at(2026, 2, 13)
    )

    invoice = Invoice.objects.get(pk=change.invoice.pk)
    assert invoice.purpose == InvoicePurpose.PLAN_CHANGE
    assert invoice.status == InvoiceStatus.PAID
    assert invoice.payments.get().amount == invoice.total
    assert len(mail.outbox) == 2  # two receipts


def test_the_period_close_charges_the_renewal_with_its_overage(customer, basic, collect):
    collect(subscription_create, customer=customer, plan=basic, at=at(2026, 1, 31))
    transfer = basic.entitlements.get(feature__key="transfer").feature
    report_usage(customer, transfer, "70", at=at(2026, 2, 10))  # 20 GB over 50 GB, $0.25/GB

    result = collect(periods_close, now=at(2026, 3, 1))

    renewal = Invoice.objects.get(number=result.invoices[0])
    overage = renewal.lines.get(kind=LineKind.OVERAGE)
    assert overage.amount.amount == Decimal("5.00")
    assert renewal.status == InvoiceStatus.PAID
    assert renewal.payments.get().amount.amount == Decimal("15.50")


def test_collecting_twice_charges_once(customer, basic):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    invoice = Invoice.objects.get(customer=customer)
    provider = CountingProvider()

    invoice_collect(invoice=invoice, provider=provider)
    with pytest.raises(Conflict) as error:
        invoice_collect(invoice=invoice, provider=provider)

    assert error.value.code == "invoice_not_payable"
    assert "already paid" in error.value.message
    assert provider.charges == 1
    assert invoice.payments.count() == 1


def test_a_retry_after_a_lost_commit_sends_the_same_key(customer, basic):
    """The provider charged but our transaction never committed: the retry names the same
    charge, so a real provider answers it instead of charging again."""
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    invoice = Invoice.objects.get(customer=customer)
    provider = CountingProvider()

    with pytest.raises(RuntimeError), transaction.atomic():
        invoice_collect(invoice=invoice, provider=provider)
        raise RuntimeError("the process died before commit")
    invoice_collect(invoice=invoice, provider=provider)

    assert provider.keys == [f"{invoice.number}:charge:1"] * 2
    assert Invoice.objects.get(pk=invoice.pk).payments.count() == 1


def test_a_decline_keeps_the_reason_and_emails_a_link_to_pay(customer, basic, declining, collect):
    collect(subscription_create, customer=customer, plan=basic, at=timezone.now())

    invoice = Invoice.objects.get(customer=customer)
    assert invoice.status == InvoiceStatus.ISSUED
    assert invoice.payment_error == "Your card was declined (test provider)."
    failed = invoice.payments.get()
    assert (failed.status, failed.message) == ("failed", invoice.payment_error)
    [notice] = mail.outbox
    assert notice.subject == f"Payment of invoice {invoice.number} failed: please pay $10.50"
    assert "Your card was declined (test provider)." in notice.body
    assert f"https://entitlements.example/dashboard/invoices/{invoice.number}/" in notice.body
    # Still within the grace period: the subscription is active.
    assert Subscription.objects.get(customer=customer).status == SubscriptionStatus.ACTIVE


def test_dunning_retries_emails_each_time_then_past_due_then_paying_restores(
    customer, basic, declining, collect, settings
):
    start = timezone.now()
    collect(subscription_create, customer=customer, plan=basic, at=start)
    invoice = Invoice.objects.get(customer=customer)
    assert invoice.due_at == start + dt.timedelta(days=7)  # BILLING_GRACE_DAYS

    # Not due yet (the next try is BILLING_PAYMENT_RETRY_HOURS after the decline).
    assert collect(payments_collect, now=start + dt.timedelta(hours=23)).declined == []
    # Each daily retry is declined and emailed.
    for day in (1, 2):
        run = collect(payments_collect, now=start + dt.timedelta(days=day, minutes=30))
        assert run.declined == [invoice.number]
    assert len(mail.outbox) == 3
    assert Invoice.objects.get(pk=invoice.pk).payments.count() == 3
    keys = list(invoice.payments.order_by("pk").values_list("idempotency_key", flat=True))
    assert keys == [f"{invoice.number}:charge:{n}" for n in (1, 2, 3)]

    # Past the due date: past due.
    run = collect(payments_collect, now=start + dt.timedelta(days=7, minutes=1))
    assert (run.declined, run.past_due) == ([invoice.number], 1)
    subscription = Subscription.objects.get(customer=customer)
    assert subscription.status == SubscriptionStatus.PAST_DUE
    storage = basic.storage
    # Default BILLING_PAST_DUE_ACCESS=keep: access unchanged.
    assert entitlement_check(customer, storage).has_access is True

    # The customer fixes the card and pays: active again, receipt sent.
    settings.BILLING_TEST_PROVIDER_DECLINE = []
    paid = collect(invoice_pay, invoice=invoice)
    assert paid.status == InvoiceStatus.PAID and paid.payment_error == ""
    assert Subscription.objects.get(customer=customer).status == SubscriptionStatus.ACTIVE
    assert mail.outbox[-1].subject.startswith(f"Receipt for invoice {invoice.number}")


def test_past_due_denies_access_when_configured(customer, basic, declining, collect, settings):
    start = timezone.now()
    collect(subscription_create, customer=customer, plan=basic, at=start)
    collect(payments_collect, now=start + dt.timedelta(days=8))
    assert Subscription.objects.get(customer=customer).status == SubscriptionStatus.PAST_DUE
    settings.BILLING_PAST_DUE_ACCESS = "deny"
    transfer = basic.entitlements.get(feature__key="transfer").feature

    check = entitlement_check(customer, transfer)
    result = entitlement_consume(customer, transfer, "1", "evt-overdue-1")

    assert check.has_access is False and check.limit == Decimal("50")
    assert (result.allowed, result.reason) == (False, "payment_overdue")
    assert result.entitlement.has_access is False
    assert entitlement_check(customer, transfer).usage == 0  # nothing recorded

    settings.BILLING_TEST_PROVIDER_DECLINE = []
    collect(invoice_pay, invoice=Invoice.objects.get(customer=customer))
    result = entitlement_consume(customer, transfer, "1", "evt-overdue-2")
    assert (result.allowed, result.reason) == (True, None)


def test_paying_a_paid_or_void_invoice_is_a_clear_conflict(customer, basic, collect):
    collect(subscription_create, customer=customer, plan=basic, at=at(2026, 1, 31))
    invoice = Invoice.objects.get(customer=customer)

    with pytest.raises(Conflict, match="already paid"):
        invoice_pay(invoice=invoice)
    invoice_refund_void(invoice=invoice, reason="Duplicate")
    with pytest.raises(Conflict, match="void"):
        invoice_pay(invoice=invoice)


def test_pay_now_declined_raises_and_records_the_attempt(customer, basic, declining, collect):
    collect(subscription_create, customer=customer, plan=basic, at=at(2026, 1, 31))
    invoice = Invoice.objects.get(customer=customer)

    with pytest.raises(PaymentFailed, match="declined"):
        invoice_pay(invoice=invoice)

    assert invoice.payments.filter(status="failed").count() == 2


def test_void_and_refund_a_paid_invoice(customer, basic, collect):
    collect(subscription_create, customer=customer, plan=basic, at=at(2026, 1, 31))
    invoice = Invoice.objects.get(customer=customer)

    voided = invoice_refund_void(invoice=invoice, reason="Charged twice by mistake")

    assert voided.status == InvoiceStatus.VOID
    refund = voided.payments.get(kind="refund")
    assert (refund.status, refund.amount.amount) == ("succeeded", Decimal("10.50"))
    assert refund.idempotency_key == f"{invoice.number}:refund:1"
    assert [h.status for h in voided.history.order_by("history_id")][-2:] == ["paid", "void"]
    with pytest.raises(Conflict) as error:
        invoice_refund_void(invoice=invoice, reason="again")
    assert (error.value.code, error.value.status) == ("invoice_void", 409)
    assert voided.payments.filter(kind="refund").count() == 1
    with pytest.raises(InvalidInput):
        invoice_refund_void(invoice=invoice, reason=" ")


def test_a_refused_refund_leaves_the_invoice_paid(customer, basic, collect):
    collect(subscription_create, customer=customer, plan=basic, at=at(2026, 1, 31))
    invoice = Invoice.objects.get(customer=customer)

    with pytest.raises(PaymentFailed, match="refund"):
        invoice_refund_void(
            invoice=invoice, reason="Refund", provider=FailingPaymentProvider("Card expired.")
        )

    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID
    assert invoice.payments.get(kind="refund").status == "failed"
    assert Payment.objects.filter(invoice=invoice, kind="refund").count() == 1


def test_an_email_that_fails_is_kept_pending_for_the_sweep(customer, basic, collect, settings):
    settings.EMAIL_BACKEND = "billing.tests.test_payments.BrokenMailBackend"
    collect(subscription_create, customer=customer, plan=basic, at=at(2026, 1, 31))
    receipt = InvoiceEmail.objects.get()
    assert (receipt.status, receipt.attempts) == ("pending", 1)
    assert "mail server down" in receipt.last_error

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    from billing.tasks import invoice_emails_sweep

    assert invoice_emails_sweep(due_within_seconds=3600) == 1
    receipt.refresh_from_db()
    assert (receipt.status, receipt.attempts) == ("sent", 2)
    assert len(mail.outbox) == 1


class BrokenMailBackend:
    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise OSError("mail server down")
