"""The invoice page: printable, entitlement lines under the plan line, only for those who may
see it."""

import re

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from billing.models import Invoice
from billing.services.period_close import periods_close
from billing.services.subscriptions import subscription_create
from core.roles import PRODUCT_MANAGERS, SUPPORT
from customers.tests.factories import CustomerFactory, CustomerUserFactory, UserFactory

from .conftest import at
from .factories import report_usage

pytestmark = [pytest.mark.django_db, pytest.mark.urls("billing.tests.urls")]


@pytest.fixture
def invoice(customer, basic):
    subscription = subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    transfer = basic.entitlements.get(feature__key="transfer").feature
    report_usage(customer, basic.storage, "87.5", at=at(2026, 2, 10))
    report_usage(customer, transfer, "60", at=at(2026, 2, 11))
    periods_close(now=at(2026, 2, 28))
    return Invoice.objects.filter(subscription=subscription).latest("issued_at")


def page(client, user, invoice):
    client.force_login(user)
    return client.get(reverse("billing:invoice_detail", args=[invoice.number]))


def text_of(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


def test_the_owner_sees_a_printable_invoice_with_entitlements_under_the_plan(client, invoice):
    user = CustomerUserFactory(customer=invoice.customer).user

    response = page(client, user, invoice)

    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/css/invoice.css" in html and "/static/css/app.css" in html
    assert "data-print" in html and "/static/billing/print.js" in html
    text = text_of(response)
    assert "Invoice INV-2026-000002" in text and "Acme Ltd" in text
    plan = text.index("Basic plan, monthly (Feb 28, 2026 – Mar 31, 2026) 1 $10.50 $10.50")
    storage = text.index("Storage: 100 GB included, 87.5 GB used Included")
    transfer = text.index("Transfer: 50 GB included, 60 GB used Included")
    overage = text.index("Transfer overage: 10 GB beyond 50 GB included")
    assert plan < storage < transfer < overage
    assert "10 $0.25 $2.50" in text
    assert "Total $13.00" in text
    assert "Encryption" not in text  # not shown on invoices


@pytest.mark.parametrize("group", [SUPPORT, PRODUCT_MANAGERS])
def test_support_and_product_managers_see_any_invoice(client, invoice, group):
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get_or_create(name=group)[0])

    assert page(client, user, invoice).status_code == 200


def test_a_superuser_sees_any_invoice(client, invoice):
    assert page(client, UserFactory(is_staff=True, is_superuser=True), invoice).status_code == 200


def test_another_customer_gets_a_404(client, invoice):
    stranger = CustomerUserFactory(customer=CustomerFactory()).user

    assert page(client, stranger, invoice).status_code == 404


def test_staff_outside_the_billing_groups_get_a_404(client, invoice):
    assert page(client, UserFactory(is_staff=True), invoice).status_code == 404


def test_anonymous_is_sent_to_login(client, invoice):
    response = client.get(reverse("billing:invoice_detail", args=[invoice.number]))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_list_shows_a_customer_only_their_own_invoices(client, invoice, basic):
    other = CustomerFactory(name="Other Co")
    subscription_create(customer=other, plan=basic, at=at(2026, 1, 15))
    client.force_login(CustomerUserFactory(customer=invoice.customer).user)

    response = client.get(reverse("billing:invoice_list"))

    numbers = re.findall(r"INV-\d{4}-\d{6}", response.content.decode())
    assert sorted(set(numbers)) == ["INV-2026-000001", "INV-2026-000002"]
    assert "Other Co" not in response.content.decode()
