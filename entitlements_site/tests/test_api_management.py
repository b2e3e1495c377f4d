"""Management endpoints: features, plans with entitlements, top-up packs, customers,
overrides and grants."""

from decimal import Decimal

import pytest

from catalog.models import Feature, Plan, PlanEntitlement, TopUpPack
from customers.models import Customer, EntitlementOverride, Grant

from .test_api_hot import assert_error

pytestmark = pytest.mark.django_db


# --- features -------------------------------------------------------------------------------


def test_feature_create_list_get_update(api):
    created = api.post(
        "/api/v1/features",
        {"key": "api-calls", "name": "API calls", "kind": "metered", "unit": "calls"},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json() == {
        "key": "api-calls",
        "name": "API calls",
        "description": "",
        "kind": "metered",
        "unit": "calls",
        "aggregation": "sum",
    }
    listed = api.get("/api/v1/features").json()
    assert listed["count"] == 1 and listed["results"][0]["key"] == "api-calls"
    renamed = api.patch("/api/v1/features/api-calls", {"name": "Requests"}, format="json")
    assert renamed.json()["name"] == "Requests"


def test_feature_key_cannot_change(features, api):
    response = api.patch("/api/v1/features/storage", {"key": "disk"}, format="json")
    assert_error(response, 400, "invalid")
    assert "key" in response.json()["error"]["details"]
    assert Feature.objects.filter(key="storage").exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"key": "Not A Slug", "name": "X", "kind": "boolean"}, "key"),
        ({"key": "x", "name": "X", "kind": "teleport"}, "kind"),
        ({"key": "x", "name": "X", "kind": "boolean", "unit": "GB"}, "unit"),
        ({"key": "storage", "name": "Again", "kind": "boolean"}, "key"),
    ],
)
def test_feature_bad_input_is_400_with_the_field(features, api, body, field):
    response = api.post("/api/v1/features", body, format="json")
    assert_error(response, 400, "invalid")
    assert field in response.json()["error"]["details"]
    assert Feature.objects.count() == 4


def test_deleting_a_feature_in_use_is_409(plan, api):
    assert_error(api.delete("/api/v1/features/storage"), 409, "in_use")


def test_unknown_feature_is_404(api):
    assert_error(api.get("/api/v1/features/nope"), 404, "not_found")


# --- plans ----------------------------------------------------------------------------------


def test_plan_create_with_entitlements_and_money(features, api):
    body = {
        "key": "business",
        "name": "Business Storage",
        "price": {"amount": "150.00", "currency": "USD"},
        "status": "active",
        "rank": 30,
        "entitlements": [
            {"feature": "storage", "limit": "1000", "show_on_invoice": True},
            {
                "feature": "data-transfer",
                "limit": "500",
                "enforcement": "soft",
                "overage_price": {"amount": "0.10", "currency": "USD"},
            },
            {"feature": "file-versioning", "enabled": True},
        ],
    }
    response = api.post("/api/v1/plans", body, format="json")
    assert response.status_code == 201, response.content
    plan = response.json()
    assert plan["price"] == {"amount": "150.00", "currency": "USD"}
    transfer = next(e for e in plan["entitlements"] if e["feature"] == "data-transfer")
    assert transfer["kind"] == "metered" and transfer["limit"] == "500"
    assert transfer["overage_price"] == {"amount": "0.1000", "currency": "USD"}
    assert transfer["notify_at"] == [80, 100]


def test_plan_with_a_bad_entitlement_saves_nothing(features, api):
    body = {
        "key": "broken",
        "name": "Broken",
        "price": {"amount": "5", "currency": "USD"},
        "entitlements": [{"feature": "storage"}],  # metered without a limit
    }
    response = api.post("/api/v1/plans", body, format="json")
    assert_error(response, 400, "invalid")
    assert "limit" in response.json()["error"]["details"]
    assert not Plan.objects.filter(key="broken").exists()


@pytest.mark.parametrize(
    "price",
    [
        {"amount": "-1", "currency": "USD"},
        {"amount": "x"},
        "50",
        {"amount": "1", "currency": "XYZ"},
    ],
)
def test_plan_bad_money_is_400(features, api, price):
    body = {"key": "p", "name": "P", "price": price}
    assert_error(api.post("/api/v1/plans", body, format="json"), 400, "invalid")


def test_plan_patch_replaces_the_entitlement_set(plan, api):
    response = api.patch(
        "/api/v1/plans/basic",
        {"entitlements": [{"feature": "storage", "limit": "150"}, {"feature": "data-transfer",
                                                                   "unlimited": True}]},
        format="json",
    )  # fmt: skip
    assert response.status_code == 200, response.content
    rows = {e.feature.key: e for e in PlanEntitlement.objects.filter(plan=plan)}
    assert set(rows) == {"storage", "data-transfer"}
    assert rows["storage"].limit == Decimal("150") and rows["data-transfer"].unlimited


def test_plan_duplicate_entitlement_features_are_refused(plan, api):
    response = api.patch(
        "/api/v1/plans/basic",
        {"entitlements": [{"feature": "storage", "limit": "1"}, {"feature": "storage",
                                                                 "limit": "2"}]},
        format="json",
    )  # fmt: skip
    assert_error(response, 400, "invalid")
    assert PlanEntitlement.objects.get(plan=plan, feature__key="storage").limit == 100


# --- top-up packs ---------------------------------------------------------------------------


def test_topup_pack_create_and_rules(plan, api):
    body = {
        "key": "extra-20-gb",
        "name": "Extra 20 GB",
        "feature": "storage",
        "quantity": "20",
        "price": {"amount": "10.00", "currency": "USD"},
        "plans": ["basic"],
    }
    created = api.post("/api/v1/topup-packs", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["quantity"] == "20" and created.json()["plans"] == ["basic"]
    gate = dict(body, key="gate-pack", feature="file-versioning")
    assert_error(api.post("/api/v1/topup-packs", gate, format="json"), 400, "invalid")
    days = dict(body, key="days-pack", expiry="days")
    assert_error(api.post("/api/v1/topup-packs", days, format="json"), 400, "invalid")
    assert TopUpPack.objects.count() == 1


# --- customers ------------------------------------------------------------------------------


def test_customer_create_get_search_update(plan, api):
    created = api.post(
        "/api/v1/customers",
        {"external_id": "cust_42", "name": "Globex", "email": "it@globex.test"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["external_id"] == "cust_42" and body["currency"] == "USD"
    assert body["plan"] is None and body["created_at"].endswith("Z")
    assert api.get("/api/v1/customers/cust_42").json()["name"] == "Globex"
    found = api.get("/api/v1/customers", {"search": "glob"}).json()
    assert [c["external_id"] for c in found["results"]] == ["cust_42"]
    updated = api.patch("/api/v1/customers/cust_42", {"name": "Globex Inc"}, format="json")
    assert updated.json()["name"] == "Globex Inc"


def test_customer_duplicate_external_id_and_bad_email(customer, api):
    dup = api.post("/api/v1/customers", {"external_id": "acme", "name": "X"}, format="json")
    assert_error(dup, 400, "invalid")
    bad = api.post(
        "/api/v1/customers", {"external_id": "n", "name": "N", "email": "nope"}, format="json"
    )
    assert_error(bad, 400, "invalid")
    assert Customer.objects.count() == 1


def test_customer_shows_its_plan_and_404s(customer, api):
    assert api.get("/api/v1/customers/acme").json()["plan"] == "basic"
    assert_error(api.get("/api/v1/customers/ghost"), 404, "customer_not_found")


# --- overrides and grants -------------------------------------------------------------------


def test_override_changes_the_check_and_ending_it_restores_the_plan(customer, api):
    created = api.post(
        "/api/v1/customers/acme/overrides",
        {"feature": "storage", "limit": "2000", "reason": "Enterprise deal"},
        format="json",
    )
    assert created.status_code == 201, created.content
    check = api.get("/api/v1/customers/acme/entitlements/storage").json()
    assert check["limit"] == "2000" and check["source"] == "override"

    ended = api.delete(f"/api/v1/customers/acme/overrides/{created.json()['id']}")
    assert ended.status_code == 204
    check = api.get("/api/v1/customers/acme/entitlements/storage").json()
    assert check["limit"] == "100" and check["source"] == "plan"
    assert EntitlementOverride.objects.get().ends_at is not None


def test_override_needs_a_reason_and_valid_values(customer, api):
    no_reason = api.post(
        "/api/v1/customers/acme/overrides", {"feature": "storage", "limit": "5"}, format="json"
    )
    assert_error(no_reason, 400, "invalid")
    bad_kind = api.post(
        "/api/v1/customers/acme/overrides",
        {"feature": "file-versioning", "limit": "5", "reason": "x"},
        format="json",
    )
    assert_error(bad_kind, 400, "invalid")
    assert EntitlementOverride.objects.count() == 0


def test_grant_adds_balance_and_voiding_removes_it(customer, api):
    created = api.post(
        "/api/v1/customers/acme/grants",
        {"feature": "data-transfer", "quantity": "10", "reason": "Goodwill"},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["consumed"] == "0"
    check = api.get("/api/v1/customers/acme/entitlements/data-transfer").json()
    assert (check["granted"], check["balance"]) == ("10", "30")
    assert api.delete(f"/api/v1/customers/acme/grants/{created.json()['id']}").status_code == 204
    check = api.get("/api/v1/customers/acme/entitlements/data-transfer").json()
    assert (check["granted"], check["balance"]) == ("0", "20")
    assert_error(
        api.delete(f"/api/v1/customers/acme/grants/{created.json()['id']}"), 400, "grant_void"
    )


def test_grants_only_for_metered_features_and_positive_quantities(customer, api):
    for body in (
        {"feature": "file-versioning", "quantity": "1"},
        {"feature": "storage", "quantity": "0"},
        {"feature": "storage", "quantity": "-3"},
    ):
        assert_error(api.post("/api/v1/customers/acme/grants", body, format="json"), 400, "invalid")
    assert Grant.objects.count() == 0


def test_another_customers_override_is_404(customer, api):
    other = Customer.objects.create(external_id="other", name="Other")
    created = api.post(
        "/api/v1/customers/acme/overrides",
        {"feature": "storage", "limit": "1", "reason": "r"},
        format="json",
    ).json()
    assert_error(
        api.get(f"/api/v1/customers/{other.external_id}/overrides/{created['id']}"),
        404,
        "not_found",
    )
