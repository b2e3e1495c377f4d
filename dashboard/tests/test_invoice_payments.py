"""Paying from the dashboard: outstanding invoices and "Pay now", the invoice page (seller,
due date, payments), receipts, past due; and support voiding with a refund."""

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.urls import reverse

from billing.models import Invoice, InvoiceEmail, InvoiceStatus
from billing.services.payments import invoice_collect, payments_collect
from core.roles import SUPPORT
from customers.models import SubscriptionStatus

INVOICES = reverse("dashboard:invoices")


def first_invoice(customer) -> Invoice:
    return Invoice.objects.filter(customer=customer).order_by("pk").first()


def pay_url(invoice) -> str:
    return reverse("dashboard:invoice_pay", args=[invoice.number])


def page_url(invoice) -> str:
    return reverse("dashboard:invoice_detail", args=[invoice.number])


@pytest.fixture
def declining(settings):
    settings.BILLING_PAYMENT_PROVIDER = "billing.providers.TestPaymentProvider"
    settings.BILLING_TEST_PROVIDER_DECLINE = ["acme"]


def test_an_outstanding_invoice_is_offered_for_payment(client_a, world):
    invoice = first_invoice(world.a)  # issued; its charge runs after commit, not in this test

    html = client_a.get(INVOICES).content.decode()

    assert "To pay" in html and f'action="{pay_url(invoice)}"' in html
    assert "Pay now" in html


def test_pay_now_charges_it_and_sends_a_receipt(
    client_a, world, django_capture_on_commit_callbacks
):
    invoice = first_invoice(world.a)

    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(pay_url(invoice))

    assert response.status_code == 302 and response["Location"] == page_url(invoice)
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID
    assert [m.subject for m in mail.outbox] == [
        f"Receipt for invoice {invoice.number}: $50.00 paid"
    ]
    html = client_a.get(INVOICES).content.decode()
    assert "To pay" not in html
    assert "Receipts" in html and "ops@acme.test" in html


def test_paying_twice_is_a_clear_conflict_and_charges_once(client_a, world):
    invoice = first_invoice(world.a)
    client_a.post(pay_url(invoice))

    response = client_a.post(pay_url(invoice))

    assert response.status_code == 409
    assert f"Invoice {invoice.number} is already paid." in response.content.decode()
    assert invoice.payments.count() == 1


def test_a_declined_payment_shows_the_reason_and_leaves_it_open(client_a, world, declining):
    invoice = first_invoice(world.a)

    response = client_a.post(pay_url(invoice))

    html = response.content.decode()
    assert response.status_code == 402
    assert "The payment did not go through." in html
    assert "Your card was declined (test provider)." in html
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.ISSUED


def test_another_customers_invoice_is_a_404(client_a, world):
    theirs = first_invoice(world.b)

    assert client_a.get(page_url(theirs)).status_code == 404
    assert client_a.post(pay_url(theirs)).status_code == 404
    assert Invoice.objects.get(pk=theirs.pk).status == InvoiceStatus.ISSUED
    assert (
        client_a.get(reverse("dashboard:invoice_detail", args=["INV-1999-000001"])).status_code
        == 404
    )


def test_the_invoice_page_shows_seller_due_date_status_and_payments(client_a, world, settings):
    settings.BILLING_SELLER = {
        "name": "Storage Co.",
        "address": "5 Harbour Road\nBristol",
        "email": "accounts@storage.test",
        "tax_id": "GB123456789",
    }
    invoice = first_invoice(world.a)
    invoice_collect(invoice=invoice)

    html = client_a.get(page_url(invoice)).content.decode()

    assert "Storage Co." in html and "5 Harbour Road<br>Bristol" in html and "GB123456789" in html
    assert "Due</dt>" in html and f"{invoice.due_at:%b} {invoice.due_at.day}, " in html
    assert "Paid</span>" in html  # the status badge
    assert "Charge via builtin" in html and "Succeeded" in html
    assert "data-print" in html  # the print button (print CSS hides the rest)


def test_the_top_bar_names_the_customer_not_the_login(client_a, world):
    html = client_a.get(reverse("dashboard:overview")).content.decode()
    account = html.split('<form class="logout"', 1)[1].split("</form>", 1)[0]
    assert "Acme" in account and "alice" not in account


def test_past_due_is_shown_on_the_dashboard_and_the_support_page(
    client, world, declining, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        payments_collect(now=first_invoice(world.a).due_at)
    assert world.a.subscriptions.get().status == SubscriptionStatus.PAST_DUE

    client.force_login(world.user_a)
    html = client.get(reverse("dashboard:overview")).content.decode()
    assert "Your subscription is past due." in html

    support = world.user_b  # any login in the Support group
    support.groups.add(Group.objects.get_or_create(name=SUPPORT)[0])
    client.force_login(support)
    html = client.get(reverse("support:customer", args=[world.a.pk])).content.decode()
    assert "Past due" in html and "access kept" in html


@pytest.fixture
def support_client(client, world):
    world.staff.groups.add(Group.objects.get_or_create(name=SUPPORT)[0])
    client.force_login(world.staff)
    return client


def void_url(invoice) -> str:
    return reverse("support:invoice_void", args=[invoice.customer_id, invoice.number])


def test_support_voids_a_paid_invoice_with_a_refund_after_confirming(support_client, world):
    invoice = first_invoice(world.a)
    invoice_collect(invoice=invoice)

    page = support_client.get(void_url(invoice)).content.decode()
    assert f"Void and refund {invoice.number}?" in page and "$50.00 goes back" in page
    refused = support_client.post(void_url(invoice), {"reason": ""})
    assert refused.status_code == 400
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID

    response = support_client.post(void_url(invoice), {"reason": "Charged in error"})

    assert response.status_code == 302
    invoice.refresh_from_db()
    assert (invoice.status, invoice.void_reason) == (InvoiceStatus.VOID, "Charged in error")
    assert invoice.payments.get(kind="refund").status == "succeeded"
    again = support_client.post(void_url(invoice), {"reason": "again"})
    assert again.status_code == 409
    assert "already void" in again.content.decode()
    assert invoice.payments.filter(kind="refund").count() == 1


def test_voiding_is_for_support_only_and_within_the_customer(client, support_client, world):
    invoice = first_invoice(world.a)
    wrong_customer = reverse("support:invoice_void", args=[world.b.pk, invoice.number])
    assert support_client.get(wrong_customer).status_code == 404

    client.force_login(world.user_a)
    assert client.post(void_url(invoice), {"reason": "free stuff"}).status_code == 403
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.ISSUED


def test_receipts_link_to_the_dashboard_invoice(
    world, django_capture_on_commit_callbacks, settings
):
    settings.SITE_URL = "https://entitlements.example"
    invoice = first_invoice(world.a)
    with django_capture_on_commit_callbacks(execute=True):
        invoice_collect(invoice=invoice)
    assert InvoiceEmail.objects.get(invoice=invoice).status == "sent"
    assert (
        f"https://entitlements.example/dashboard/invoices/{invoice.number}/" in mail.outbox[0].body
    )


def test_with_access_denied_the_cards_say_paused_not_limit_reached(
    client_a, world, declining, settings, django_capture_on_commit_callbacks
):
    settings.BILLING_PAST_DUE_ACCESS = "deny"
    with django_capture_on_commit_callbacks(execute=True):
        payments_collect(now=first_invoice(world.a).due_at)

    html = client_a.get(reverse("dashboard:overview")).content.decode()

    assert "Paused until the overdue invoice is paid." in html
    assert "Limit reached" not in html and "85 GB" in html
    assert "your access is paused until it is paid" in html
