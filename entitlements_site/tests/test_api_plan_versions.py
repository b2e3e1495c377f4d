"""Plan versions through the API (DESIGN.md "Plan versions"): a draft, its impact, publishing
with `keep` and with `migrate`, and the bad input the issue names."""

import pytest

from catalog.models import PlanVersion
from customers.models import Subscription

from .test_api_hot import assert_error

pytestmark = pytest.mark.django_db

V = "/api/v1/plans/basic/versions"


def transfer_of(body: dict) -> dict:
    return next(e for e in body["entitlements"] if e["feature"] == "data-transfer")


def use_transfer(api, customer: str, quantity: str, event_id: str) -> None:
    event = {"event_id": event_id, "customer": customer, "feature": "data-transfer"}
    body = {"events": [{**event, "quantity": quantity}]}
    response = api.post("/api/v1/usage", body, format="json")
    assert response.json()["accepted"] == 1, response.content


def subscribe(api, external_id: str) -> None:
    body = {"external_id": external_id, "name": external_id}
    created = api.post("/api/v1/customers", body, format="json")
    assert created.status_code == 201, created.content
    path = f"/api/v1/customers/{external_id}/subscription"
    subscribed = api.post(path, {"plan": "basic"}, format="json")
    assert subscribed.status_code == 201, subscribed.content


def limit_of(api, external_id: str) -> str:
    return api.get(f"/api/v1/customers/{external_id}/entitlements/data-transfer").json()["limit"]


def test_draft_impact_keep_then_migrate(api, customer):
    # Given acme on Basic (20 GB transfer) who has used 15 GB, and a second subscriber at 5 GB
    subscribe(api, "globex")
    use_transfer(api, "acme", "15", "a-1")
    use_transfer(api, "globex", "5", "g-1")
    assert api.get("/api/v1/customers/acme/subscription").json()["plan_version"] == 1

    # When a PM makes a draft, it is a copy of version 1
    draft = api.post(V)
    assert draft.status_code == 201, draft.content
    body = draft.json()
    assert (body["version"], body["status"], body["key"]) == (2, "draft", "basic")
    assert body["price"] == {"amount": "50.00", "currency": "USD"}
    assert transfer_of(body)["limit"] == "20"
    assert len(body["entitlements"]) == 4

    # and lowers the transfer limit to 10 GB and the price up to 60
    edited = api.patch(
        f"{V}/2",
        {
            "price": {"amount": "60.00", "currency": "USD"},
            "entitlements": [
                {**e, "limit": "10"} if e["feature"] == "data-transfer" else e
                for e in body["entitlements"]
            ],
        },
        format="json",
    )
    assert edited.status_code == 200, edited.content
    assert transfer_of(edited.json())["limit"] == "10"

    # Then the preview says: 2 subscribers, 1 of them already over the new limit, +$20 a month
    impact = api.get(f"{V}/2/impact")
    assert impact.status_code == 200, impact.content
    assert impact.json() == {
        "plan": "basic",
        "version": 2,
        "subscribers": 2,
        "subscribers_on_published": 2,
        "customers_over": 1,
        "changes": [
            {
                "feature": "data-transfer",
                "before": transfer_of(body),
                "after": {**transfer_of(body), "limit": "10"},
                "customers_over_new_limit": 1,
            }
        ],
        "revenue": {
            "interval": "month",
            "before": {"amount": "100.00", "currency": "USD"},
            "after": {"amount": "120.00", "currency": "USD"},
            "change": {"amount": "20.00", "currency": "USD"},
        },
    }
    # and nobody's entitlement changed yet
    assert limit_of(api, "acme") == "20"

    # When it is published keeping existing customers
    published = api.post(f"{V}/2/publish", {"existing": "keep"}, format="json")
    assert published.status_code == 200, published.content
    assert (published.json()["status"], published.json()["migrated"]) == ("published", 0)

    # Then they keep their limit and their version; a new subscriber gets the new one
    assert limit_of(api, "acme") == "20"
    assert api.get("/api/v1/customers/globex/subscription").json()["plan_version"] == 1
    subscribe(api, "initech")
    assert limit_of(api, "initech") == "10"
    assert api.get("/api/v1/customers/initech/subscription").json()["plan_version"] == 2
    assert api.get("/api/v1/plans/basic").json()["price"]["amount"] == "60.00"

    # When another version (5 GB) is published migrating everyone
    assert api.post(V).json()["version"] == 3
    entitlements = api.get(f"{V}/3").json()["entitlements"]
    for e in entitlements:
        if e["feature"] == "data-transfer":
            e["limit"] = "5"
    api.patch(f"{V}/3", {"entitlements": entitlements}, format="json")
    over = api.get(f"{V}/3/impact").json()["changes"][0]["customers_over_new_limit"]
    migrated = api.post(f"{V}/3/publish", {"existing": "migrate"}, format="json")

    # Then all three move at once (acme was already over it, globex exactly at it: the preview
    # said 1)
    assert over == 1
    assert migrated.status_code == 200, migrated.content
    assert migrated.json()["migrated"] == 3
    for external_id in ("acme", "globex", "initech"):
        assert limit_of(api, external_id) == "5"
        sub = api.get(f"/api/v1/customers/{external_id}/subscription").json()
        assert sub["plan_version"] == 3
    check = api.post(
        "/api/v1/customers/acme/entitlements/data-transfer/consume",
        {"quantity": "1", "event_id": "a-2"},
        format="json",
    )
    assert check.json()["allowed"] is False
    # and both publishings left history rows: the versions' and each moved subscription's
    statuses = [v["status"] for v in api.get(V).json()["results"]]
    assert statuses == ["published", "superseded", "superseded"]
    v3 = PlanVersion.objects.get(plan__key="basic", number=3)
    assert v3.history.filter(status="published").exists()
    acme = Subscription.objects.get(customer__external_id="acme")
    assert [h.plan_version.number for h in acme.history.order_by("history_id")][-1] == 3


def test_a_second_draft_is_a_conflict(api, plan):
    assert api.post(V).status_code == 201

    assert_error(api.post(V), 409, "draft_exists")
    assert PlanVersion.objects.filter(plan=plan).count() == 2


def test_publishing_a_non_draft_and_editing_a_published_version_are_conflicts(api, plan):
    price = {"price": {"amount": "1.00", "currency": "USD"}}

    assert_error(
        api.post(f"{V}/1/publish", {"existing": "keep"}, format="json"), 409, "version_not_draft"
    )
    assert_error(api.patch(f"{V}/1", price, format="json"), 409, "version_not_draft")
    assert api.get("/api/v1/plans/basic").json()["price"]["amount"] == "50.00"


def test_unknown_plan_or_version_is_404(api, plan):
    assert_error(api.get("/api/v1/plans/nope/versions"), 404, "plan_not_found")
    assert_error(api.post("/api/v1/plans/nope/versions"), 404, "plan_not_found")
    assert_error(api.get(f"{V}/9"), 404, "version_not_found")
    assert_error(api.get(f"{V}/9/impact"), 404, "version_not_found")
    assert_error(
        api.post(f"{V}/9/publish", {"existing": "keep"}, format="json"), 404, "version_not_found"
    )


@pytest.mark.parametrize(
    "body, field",
    [
        ({"price": {"amount": "1e400", "currency": "USD"}}, "price"),
        ({"price": {"amount": "12345678901.00", "currency": "USD"}}, "price"),
        ({"price": {"amount": "1.001", "currency": "USD"}}, "price"),
        ({"price": {"amount": "-1", "currency": "USD"}}, "price"),
        ({"entitlements": [{"feature": "data-transfer", "limit": "0.00001"}]}, "entitlements"),
        ({"entitlements": [{"feature": "data-transfer", "limit": "NaN"}]}, "entitlements"),
        ({"entitlements": [{"feature": "data-transfer", "limit": 10}]}, "entitlements"),
        (
            {"entitlements": [{"feature": "data-transfer", "limit": "1234567890123456"}]},
            "entitlements",
        ),
    ],
)
def test_a_draft_refuses_decimals_out_of_bounds(api, plan, body, field):
    api.post(V)

    response = api.patch(f"{V}/2", body, format="json")

    assert_error(response, 400, "invalid")
    assert field in response.json()["error"]["details"]
    draft = api.get(f"{V}/2").json()
    assert draft["price"]["amount"] == "50.00"
    assert transfer_of(draft)["limit"] == "20"


def test_publish_needs_keep_or_migrate(api, plan):
    api.post(V)

    response = api.post(f"{V}/2/publish", {"existing": "sometimes"}, format="json")

    assert_error(response, 400, "invalid")
    assert "existing" in response.json()["error"]["details"]
    assert api.get(f"{V}/2").json()["status"] == "draft"


def test_a_draft_in_another_currency_is_refused(api, plan):
    api.post(V)

    response = api.patch(f"{V}/2", {"price": {"amount": "5.00", "currency": "EUR"}}, format="json")

    assert_error(response, 400, "currency_mismatch")


def test_duplicate_plan_from_a_version(api, plan):
    response = api.post(f"{V}/1/duplicate", {"key": "basic-eu", "name": "Basic EU"}, format="json")

    assert response.status_code == 201, response.content
    copy = response.json()
    assert (copy["key"], copy["status"], copy["price"]["amount"]) == ("basic-eu", "draft", "50.00")
    assert transfer_of(copy)["limit"] == "20"
    again = api.post(f"{V}/1/duplicate", {"key": "basic-eu", "name": "Again"}, format="json")
    assert_error(again, 400, "invalid")


def test_a_plan_shows_its_published_versions_terms(api, plan):
    draft = api.post(V).json()
    entitlements = [{**e, "limit": "1"} if e["limit"] else e for e in draft["entitlements"]]
    api.patch(f"{V}/2", {"entitlements": entitlements}, format="json")

    shown = api.get("/api/v1/plans/basic").json()
    listed = api.get("/api/v1/plans").json()["results"][0]

    assert transfer_of(shown)["limit"] == transfer_of(listed)["limit"] == "20"
    assert len(shown["entitlements"]) == len(listed["entitlements"]) == 4
    api.post(f"{V}/2/publish", {"existing": "keep"}, format="json")
    assert transfer_of(api.get("/api/v1/plans/basic").json())["limit"] == "1"
