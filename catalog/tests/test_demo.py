"""`python manage.py seed_demo`: the cloud-storage demo of the README, safe to run again, and the
staff groups the data migrations create."""

from decimal import Decimal
from io import StringIO

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from djmoney.money import Money

from catalog.models import Plan, TopUpPack
from core.roles import PRODUCT_MANAGERS, SUPPORT

pytestmark = pytest.mark.django_db

CATALOG_MODELS = ["feature", "plan", "planentitlement", "topuppack"]
CATALOG_HISTORY = [f"historical{model}" for model in CATALOG_MODELS]


def seed() -> None:
    call_command("seed_demo", stdout=StringIO())


def snapshot() -> dict[str, int]:
    """Row counts of every catalog model (history tables included), users and groups."""
    counts = {
        model._meta.label: model._default_manager.count()
        for model in apps.get_app_config("catalog").get_models()
    }
    counts["users"] = get_user_model().objects.count()
    counts["groups"] = Group.objects.count()
    counts["group permissions"] = Group.permissions.through.objects.count()
    counts["user groups"] = get_user_model().groups.through.objects.count()
    return counts


def entitlements_of(plan_key: str) -> dict[str, tuple]:
    plan = Plan.objects.get(key=plan_key)
    return {
        e.feature.key: (e.enabled, e.limit, e.value)
        for e in plan.entitlements.select_related("feature")
    }


def test_seed_demo_twice_gives_the_same_rows():
    seed()
    first = snapshot()

    seed()

    assert snapshot() == first
    assert first["catalog.HistoricalPlan"] == Plan.objects.count() == 4
    assert first["catalog.HistoricalTopUpPack"] == TopUpPack.objects.count() == 1


def test_seed_demo_restores_an_edited_demo_plan():
    seed()
    Plan.objects.filter(key="basic").update(price=Money("1.00", "USD"))

    seed()

    assert Plan.objects.get(key="basic").price == Money("50.00", "USD")


def test_demo_basic_storage_is_50_a_month_with_100_gb_of_storage():
    seed()

    basic = Plan.objects.get(key="basic")
    assert basic.name == "Basic Storage"
    assert (basic.price, basic.interval) == (Money("50.00", "USD"), "month")
    assert (basic.status, basic.public) == ("active", True)
    storage = basic.entitlements.get(feature__key="storage")
    assert (storage.limit, storage.feature.unit, storage.feature.kind) == (
        Decimal("100"),
        "GB",
        "metered",
    )
    assert storage.feature.aggregation == "latest"


def test_demo_business_storage_has_500_gb_transfer_and_file_versioning():
    seed()

    business = Plan.objects.get(key="business")
    assert business.name == "Business Storage"
    transfer = business.entitlements.get(feature__key="data-transfer")
    assert (transfer.limit, transfer.feature.unit) == (Decimal("500"), "GB")
    assert business.entitlements.get(feature__key="file-versioning").enabled is True
    assert "encryption-access-controls" not in entitlements_of("business")


def test_demo_business_plus_adds_encryption_and_access_controls():
    seed()

    business = entitlements_of("business")
    business_plus = entitlements_of("business-plus")
    assert set(business_plus) - set(business) == {"encryption-access-controls"}
    assert business_plus["encryption-access-controls"][0] is True
    plus = Plan.objects.get(key="business-plus")
    assert plus.rank > Plan.objects.get(key="business").rank


def test_demo_plans_rise_in_rank_with_price():
    seed()

    plans = list(Plan.objects.order_by("rank"))
    assert [p.key for p in plans] == ["personal", "basic", "business", "business-plus"]
    assert [p.price.amount for p in plans] == sorted(p.price.amount for p in plans)


def test_demo_extra_20_gb_pack_costs_10():
    seed()

    pack = TopUpPack.objects.get(name="Extra 20 GB")
    assert (pack.feature.key, pack.quantity, pack.price) == (
        "storage",
        Decimal("20"),
        Money("10.00", "USD"),
    )
    assert pack.active is True
    assert not pack.plans.exists()  # offered on every plan


@pytest.mark.parametrize(
    "username, password, staff, group",
    [
        ("pm", "pm-demo", True, PRODUCT_MANAGERS),
        ("support", "support-demo", True, SUPPORT),
        ("customer", "customer-demo", False, None),
    ],
)
def test_demo_logins_work(client, username, password, staff, group):
    seed()
    seed()

    assert client.login(username=username, password=password)
    user = get_user_model().objects.get(username=username)
    assert user.is_staff is staff
    assert user.is_superuser is False
    assert list(user.groups.values_list("name", flat=True)) == ([group] if group else [])


def catalog_codenames(group_name: str) -> set[str]:
    return set(
        Permission.objects.filter(
            group__name=group_name, content_type__app_label="catalog"
        ).values_list("codename", flat=True)
    )


def test_product_managers_can_edit_the_catalog_and_read_its_history():
    expected = {
        f"{action}_{model}"
        for model in CATALOG_MODELS
        for action in ["add", "change", "delete", "view"]
    } | {f"view_{model}" for model in CATALOG_HISTORY}

    assert catalog_codenames(PRODUCT_MANAGERS) == expected


def test_support_can_only_view_the_catalog():
    codenames = catalog_codenames(SUPPORT)

    assert codenames == {f"view_{model}" for model in CATALOG_MODELS + CATALOG_HISTORY}
    assert all(codename.startswith("view_") for codename in codenames)


def test_seed_demo_keeps_the_group_permissions():
    before = {name: catalog_codenames(name) for name in [PRODUCT_MANAGERS, SUPPORT]}

    seed()

    assert {name: catalog_codenames(name) for name in [PRODUCT_MANAGERS, SUPPORT]} == before
