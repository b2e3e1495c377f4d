"""Billing endpoints: subscription (create, change plan, cancel), top-ups, invoices."""

from decimal import Decimal

import pytest
from djmoney.money import Money

from billing.models import Invoice, TopUpPurchase
from catalog import services as catalog_services
from customers import services as customer_services
from customers.models import Grant

from .test_api_hot import ISO_UTC, assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def business(features):
    return catalog_services.plan_create(
        key="business",
        name="Business Storage",
        price=Money("150.00", "USD"),
        status="active",
        rank=30,
        entitlements=[{"feature": features["storage"], "limit": Decimal("1000")}],
    )


@pytest.fixture
def pack(features):
    return catalog_services.topup_pack_create(
        key="extra-20-gb",
        name="Extra 20 GB",
        feature=features["storage"],
        quantity=Decimal("20"),
        price=Money("10.00", "USD"),
    )


def test_subscribe_invoices_the_first_period(plan, api):
    customer_services.customer_create(external_id="new", name="New Co")
    response = api.post("/api/v1/customers/new/subscription", {"plan": "basic"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["plan"] == "basic" and body["status"] == "active"
    assert ISO_UTC.match(body["current_period_end"]) and body["scheduled_plan"] is None
    invoices = api.get("/api/v1/customers/new/invoices").json()["results"]
    assert len(invoices) == 1
    invoice = invoices[0]
    assert invoice["number"].startswith("INV-") and invoice["total"] == {
        "amount": "50.00",
        "currency": "USD",
    }
    kinds = [line["kind"] for line in invoice["lines"]]
    assert kinds[0] == "plan" and "entitlement" in kinds
    storage = next(line for line in invoice["lines"] if line["feature"] == "storage")
    assert storage["amount"] == {"amount": "0.00", "currency": "USD"}
    assert api.get(f"/api/v1/customers/new/invoices/{invoice['number']}").json() == invoice


def test_upgrade_applies_at_once_with_a_proration_invoice(customer, business, api):
    response = api.post("/api/v1/customers/acme/subscription", {"plan": "business"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["plan"] == "business"
    check = api.get("/api/v1/customers/acme/entitlements/storage").json()
    assert check["limit"] == "1000"
    invoices = api.get("/api/v1/customers/acme/invoices").json()["results"]
    assert any(line["kind"] == "proration" for i in invoices for line in i["lines"])


def test_downgrade_waits_for_the_period_end_and_cancel(customer, business, api):
    api.post("/api/v1/customers/acme/subscription", {"plan": "business"}, format="json")
    body = api.post("/api/v1/customers/acme/subscription", {"plan": "basic"},
                    format="json").json()  # fmt: skip
    assert body["plan"] == "business" and body["scheduled_plan"] == "basic"
    cancelled = api.delete("/api/v1/customers/acme/subscription").json()
    assert cancelled["cancel_at_period_end"] is True and cancelled["status"] == "active"


def test_subscription_errors(customer, api):
    assert_error(api.post("/api/v1/customers/acme/subscription", {}, format="json"), 400,
                 "invalid_plan")  # fmt: skip
    assert_error(
        api.post("/api/v1/customers/acme/subscription", {"plan": "nope"}, format="json"),
        404,
        "plan_not_found",
    )
    customer_services.customer_create(external_id="bare", name="Bare")
    assert_error(api.get("/api/v1/customers/bare/subscription"), 404, "not_subscribed")
    assert_error(api.get("/api/v1/customers/ghost/subscription"), 404, "customer_not_found")


def test_topup_purchase_is_idempotent_on_its_key(customer, pack, api):
    body = {"pack": "extra-20-gb", "idempotency_key": "buy-1"}
    first = api.post("/api/v1/customers/acme/topups", body, format="json")
    assert first.status_code == 201, first.content
    again = api.post("/api/v1/customers/acme/topups", body, format="json")
    assert again.status_code == 200
    assert again.json() == first.json()
    purchase = first.json()
    assert purchase["grant"]["feature"] == "storage" and purchase["grant"]["quantity"] == "20"
    assert purchase["invoice"]["status"] == "paid"
    assert purchase["invoice"]["total"] == {"amount": "10.00", "currency": "USD"}
    assert TopUpPurchase.objects.count() == 1 and Grant.objects.count() == 1
    check = api.get("/api/v1/customers/acme/entitlements/storage").json()
    assert check["granted"] == "20" and check["balance"] == "120"


def test_topup_errors(customer, pack, api):
    assert_error(
        api.post("/api/v1/customers/acme/topups", {"pack": "nope", "idempotency_key": "k"},
                 format="json"), 404, "pack_not_found",
    )  # fmt: skip
    assert_error(
        api.post("/api/v1/customers/acme/topups", {"pack": "extra-20-gb"}, format="json"),
        400,
        "invalid_idempotency_key",
    )
    assert Invoice.objects.filter(customer__external_id="acme", lines__kind="topup").count() == 0


def test_unknown_invoice_is_404(customer, api):
    assert_error(api.get("/api/v1/customers/acme/invoices/INV-1999-000001"), 404, "not_found")
