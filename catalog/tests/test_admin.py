"""The catalog admin as product managers and support agents use it (staff users in their group,
never superusers)."""

from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import RequestFactory
from django.urls import reverse
from djmoney.money import Money

from catalog.models import Plan, PlanEntitlement
from core.roles import PRODUCT_MANAGERS, SUPPORT

from .factories import FeatureFactory, PlanEntitlementFactory, PlanFactory, TopUpPackFactory

pytestmark = pytest.mark.django_db

CATALOG_MODELS = ["feature", "plan", "planentitlement", "topuppack"]


def staff_user(username: str, group: str):
    user = get_user_model().objects.create_user(
        username=username, password="secret-pass-123", is_staff=True
    )
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def pm_client(client):
    client.force_login(staff_user("priya", PRODUCT_MANAGERS))
    return client


@pytest.fixture
def support_user():
    return staff_user("sam", SUPPORT)


@pytest.fixture
def support_client(client, support_user):
    client.force_login(support_user)
    return client


@pytest.fixture
def catalog():
    """A small catalog with one entitlement of every kind, so every list column renders."""
    storage = FeatureFactory(key="storage", name="Storage", latest=True)
    transfer = FeatureFactory(key="data-transfer", name="Data transfer", metered=True)
    versioning = FeatureFactory(key="file-versioning", name="File versioning")
    tier = FeatureFactory(key="support-tier", name="Support tier", config=True)
    basic = PlanFactory(key="basic", name="Basic Storage", price=Money("50.00", "USD"))
    PlanEntitlementFactory(plan=basic, feature=storage, limit=Decimal("100"))
    PlanEntitlementFactory(plan=basic, feature=transfer, unlimited=True)
    PlanEntitlementFactory(plan=basic, feature=versioning, enabled=False)
    PlanEntitlementFactory(plan=basic, feature=tier, value="standard")
    business = PlanFactory(key="business", name="Business Storage", price=Money("150.00", "USD"))
    PlanEntitlementFactory(plan=business, feature=transfer, limit=Decimal("500"), soft=True)
    TopUpPackFactory(key="extra-20-gb", name="Extra 20 GB", feature=storage, plans=[basic])
    return {"basic": basic, "business": business, "storage": storage, "versioning": versioning}


@pytest.mark.parametrize("model", CATALOG_MODELS)
@pytest.mark.parametrize("page", ["changelist", "add"])
def test_product_manager_opens_every_catalog_list_and_add_page(pm_client, catalog, model, page):
    response = pm_client.get(reverse(f"admin:catalog_{model}_{page}"))

    assert response.status_code == 200


def test_product_manager_opens_a_plan_and_its_history(pm_client, catalog):
    basic = catalog["basic"]

    change = pm_client.get(reverse("admin:catalog_plan_change", args=[basic.pk]))
    history = pm_client.get(reverse("admin:catalog_plan_history", args=[basic.pk]))

    assert change.status_code == 200
    assert "Basic Storage" in change.content.decode()
    assert history.status_code == 200
    assert "Basic Storage" in history.content.decode()


def test_plan_list_shows_price_with_currency_and_entitlement_count(pm_client, catalog):
    response = pm_client.get(reverse("admin:catalog_plan_changelist"))

    page = response.content.decode()
    assert "$50.00 / month" in page
    assert "$150.00 / month" in page
    assert '<td class="field-entitlement_count">4</td>' in page
    assert '<td class="field-entitlement_count">1</td>' in page


def test_entitlement_list_summarises_each_kind(pm_client, catalog):
    response = pm_client.get(reverse("admin:catalog_planentitlement_changelist"))

    page = response.content.decode()
    for summary in ["100 GB", "unlimited", "disabled", "standard", "500 GB"]:
        assert f'<td class="field-summary">{summary}</td>' in page


def test_support_sees_plans_but_cannot_change_them(support_client, support_user, catalog):
    basic = catalog["basic"]
    change_url = reverse("admin:catalog_plan_change", args=[basic.pk])

    changelist = support_client.get(reverse("admin:catalog_plan_changelist"))
    change = support_client.get(change_url)
    post = support_client.post(change_url, {"name": "Cheap Storage", "price_0": "1.00"})

    assert changelist.status_code == 200
    assert "Basic Storage" in changelist.content.decode()
    assert change.status_code == 200
    assert post.status_code == 403
    basic.refresh_from_db()
    assert (basic.name, basic.price) == ("Basic Storage", Money("50.00", "USD"))


def test_support_has_no_change_permission_on_the_catalog(support_user, catalog):
    request = RequestFactory().get("/admin/")
    request.user = support_user

    for model in [Plan, PlanEntitlement]:
        model_admin = admin.site._registry[model]
        assert model_admin.has_view_permission(request, catalog["basic"])
        assert not model_admin.has_change_permission(request, catalog["basic"])
        assert not model_admin.has_add_permission(request)
        assert not model_admin.has_delete_permission(request, catalog["basic"])


def test_support_cannot_open_the_add_page(support_client, catalog):
    response = support_client.get(reverse("admin:catalog_plan_add"))

    assert response.status_code == 403


def test_feature_key_is_read_only_once_created(pm_client, catalog):
    storage = catalog["storage"]

    change = pm_client.get(reverse("admin:catalog_feature_change", args=[storage.pk]))
    add = pm_client.get(reverse("admin:catalog_feature_add"))

    assert '<div class="readonly">storage</div>' in change.content.decode()
    assert 'name="key"' not in change.content.decode()
    assert 'name="key"' in add.content.decode()


def test_feature_key_does_not_change_when_posted(pm_client, catalog):
    storage = catalog["storage"]

    response = pm_client.post(
        reverse("admin:catalog_feature_change", args=[storage.pk]),
        {"key": "disk", "name": "Disk", "kind": "metered", "unit": "GB", "aggregation": "latest"},
    )

    assert response.status_code == 302
    storage.refresh_from_db()
    assert (storage.key, storage.name) == ("storage", "Disk")


def plan_form(**entitlement) -> dict[str, str]:
    """The POST of the plan add page with one entitlement row (management form included)."""
    data = {
        "key": "team",
        "name": "Team Storage",
        "description": "",
        "price_0": "80.00",
        "price_1": "USD",
        "interval": "month",
        "status": "active",
        "public": "on",
        "rank": "25",
        "entitlements-TOTAL_FORMS": "1",
        "entitlements-INITIAL_FORMS": "0",
        "entitlements-MIN_NUM_FORMS": "0",
        "entitlements-MAX_NUM_FORMS": "1000",
        "entitlements-0-enabled": "on",
        "entitlements-0-limit": "",
        "entitlements-0-reset": "billing_period",
        "entitlements-0-enforcement": "hard",
        "entitlements-0-overage_price_0": "",
        "entitlements-0-overage_price_1": "USD",
        "entitlements-0-notify_at": "[80, 100]",
        "entitlements-0-value": "",
    }
    data.update({f"entitlements-0-{name}": value for name, value in entitlement.items()})
    return data


def test_product_manager_adds_a_plan_with_an_entitlement(pm_client, catalog):
    storage = catalog["storage"]

    response = pm_client.post(
        reverse("admin:catalog_plan_add"),
        plan_form(feature=str(storage.pk), limit="250", notify_at="[100, 90]"),
    )

    assert response.status_code == 302, response.context["errors"]
    plan = Plan.objects.get(key="team")
    assert plan.price == Money("80.00", "USD")
    entitlement = plan.entitlements.get()
    assert (entitlement.feature, entitlement.limit, entitlement.notify_at) == (
        storage,
        Decimal("250"),
        [90, 100],
    )
    assert entitlement.overage_price is None
    assert plan.history.get().history_user.username == "priya"


def test_a_bad_entitlement_row_shows_the_error_and_saves_nothing(pm_client, catalog):
    plans_before = Plan.objects.count()
    entitlements_before = PlanEntitlement.objects.count()

    response = pm_client.post(
        reverse("admin:catalog_plan_add"),
        plan_form(feature=str(catalog["storage"].pk), limit=""),
    )

    assert response.status_code == 200
    assert "A metered entitlement needs a limit, or tick unlimited." in response.content.decode()
    assert not Plan.objects.filter(key="team").exists()
    assert Plan.objects.count() == plans_before
    assert PlanEntitlement.objects.count() == entitlements_before


def test_feature_autocomplete_for_the_entitlement_inline(pm_client, catalog):
    response = pm_client.get(
        "/admin/autocomplete/",
        {
            "app_label": "catalog",
            "model_name": "planentitlement",
            "field_name": "feature",
            "term": "sto",
        },
    )

    assert response.status_code == 200
    assert [r["text"] for r in response.json()["results"]] == ["Storage"]


def test_topup_pack_feature_autocomplete_offers_only_metered_features(pm_client, catalog):
    response = pm_client.get(
        "/admin/autocomplete/",
        {"app_label": "catalog", "model_name": "topuppack", "field_name": "feature", "term": ""},
    )

    assert response.status_code == 200
    assert [r["text"] for r in response.json()["results"]] == ["Data transfer", "Storage"]
