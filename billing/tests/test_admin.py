"""The billing admin: invoices listed and filtered, read-only once issued, drafts issued by an
action that calls the service."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse
from djmoney.money import Money

from billing.models import Invoice, InvoiceStatus
from billing.services.subscriptions import subscription_create
from core.roles import PRODUCT_MANAGERS, SUPPORT
from customers.tests.factories import CustomerFactory, UserFactory

from .conftest import at

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def issued(customer, basic):
    subscription_create(customer=customer, plan=basic, at=at(2026, 1, 31))
    return Invoice.objects.get(customer=customer)


def test_the_list_filters_by_status_and_customer_and_searches_numbers(admin_client, issued):
    url = reverse("admin:billing_invoice_changelist")

    by_status = admin_client.get(url, {"status__exact": "issued"})
    by_customer = admin_client.get(url, {"customer__id__exact": issued.customer_id})
    by_search = admin_client.get(url, {"q": "INV-2026-000001"})
    none_paid = admin_client.get(url, {"status__exact": "paid"})

    for response in (by_status, by_customer, by_search):
        assert response.status_code == 200 and b"INV-2026-000001" in response.content
    assert b"INV-2026-000001" not in none_paid.content


def test_an_issued_invoice_is_read_only_with_its_lines(admin_client, issued):
    url = reverse("admin:billing_invoice_change", args=[issued.pk])

    response = admin_client.get(url)
    posted = admin_client.post(url, {"purpose": "manual"})

    assert response.status_code == 200
    assert b"Basic plan, monthly" in response.content
    assert b'name="lines-0-description"' not in response.content  # lines not editable
    assert posted.status_code == 403
    issued.refresh_from_db()
    assert issued.purpose == "period"


def test_a_draft_built_in_the_admin_is_issued_by_the_action(admin_client):
    customer = CustomerFactory(currency="EUR")
    add = admin_client.post(
        reverse("admin:billing_invoice_add"),
        {
            "customer": customer.pk,
            "purpose": "manual",
            "lines-TOTAL_FORMS": "1",
            "lines-INITIAL_FORMS": "0",
            "lines-0-position": "1",
            "lines-0-kind": "plan",
            "lines-0-description": "Consulting",
            "lines-0-quantity": "2.5",
            "lines-0-unit_price_0": "40.10",
            "lines-0-unit_price_1": "EUR",
            "payments-TOTAL_FORMS": "0",
            "payments-INITIAL_FORMS": "0",
        },
    )
    assert add.status_code == 302, add.content.decode()[:3000]
    draft = Invoice.objects.get(customer=customer)
    assert draft.status == InvoiceStatus.DRAFT
    assert draft.total == Money("100.25", "EUR")

    admin_client.post(
        reverse("admin:billing_invoice_changelist"),
        {"action": "issue_drafts", "_selected_action": [draft.pk]},
    )

    draft.refresh_from_db()
    assert draft.status == InvoiceStatus.ISSUED and draft.number.startswith("INV-")


def test_the_void_action_voids(admin_client, issued):
    admin_client.post(
        reverse("admin:billing_invoice_changelist"),
        {"action": "void_invoices", "_selected_action": [issued.pk]},
    )

    issued.refresh_from_db()
    assert issued.status == InvoiceStatus.VOID


def test_topup_purchases_and_history_pages_open(admin_client, issued):
    assert admin_client.get(reverse("admin:billing_topuppurchase_changelist")).status_code == 200
    history = reverse("admin:billing_invoice_history", args=[issued.pk])
    assert admin_client.get(history).status_code == 200


@pytest.mark.parametrize("group", [SUPPORT, PRODUCT_MANAGERS])
def test_staff_groups_may_view_billing(group):
    codenames = set(
        Permission.objects.filter(group__name=group, content_type__app_label="billing").values_list(
            "codename", flat=True
        )
    )
    assert {"view_invoice", "view_invoiceline", "view_topuppurchase", "view_payment"} <= codenames
    assert not {c for c in codenames if not c.startswith("view_")}
    assert Group.objects.filter(name=group).exists()
