"""Every catalog rule of DESIGN.md, through the services: bad input is refused with a message on
the field a product manager would fix, and nothing is written."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from djmoney.money import Money

from catalog import services
from catalog.models import Feature, Plan, PlanEntitlement, TopUpPack

from .factories import FeatureFactory, PlanEntitlementFactory, PlanFactory, TopUpPackFactory

pytestmark = pytest.mark.django_db


def refused(call, **kwargs) -> dict[str, list[str]]:
    """Runs a service that must refuse its input; returns the messages per field."""
    with pytest.raises(ValidationError) as excinfo:
        call(**kwargs)
    return excinfo.value.message_dict


def row_counts() -> dict[str, int]:
    return {
        "features": Feature.objects.count(),
        "plans": Plan.objects.count(),
        "entitlements": PlanEntitlement.objects.count(),
        "packs": TopUpPack.objects.count(),
        "feature history": Feature.history.count(),
        "plan history": Plan.history.count(),
        "entitlement history": PlanEntitlement.history.count(),
        "pack history": TopUpPack.history.count(),
    }


@pytest.fixture
def plan():
    return PlanFactory(key="basic", name="Basic Storage")


@pytest.fixture
def storage():
    return FeatureFactory(key="storage", name="Storage", metered=True)


@pytest.fixture
def versioning():
    return FeatureFactory(key="file-versioning", name="File versioning")


@pytest.fixture
def support_tier():
    return FeatureFactory(key="support-tier", name="Support tier", config=True)


# Features


def test_feature_create_saves_a_metered_feature():
    feature = services.feature_create(
        key="data-transfer", name="Data transfer", kind="metered", unit="GB"
    )

    feature.refresh_from_db()
    assert (feature.key, feature.kind, feature.unit, feature.aggregation) == (
        "data-transfer",
        "metered",
        "GB",
        "sum",
    )
    assert feature.history.count() == 1


@pytest.mark.parametrize("key", ["data transfer", "storage/gb", "größe", ""])
def test_feature_key_must_be_a_slug(key):
    before = row_counts()

    errors = refused(services.feature_create, key=key, name="Data transfer", kind="boolean")

    if key:
        assert errors["key"] == [
            "Enter a valid “slug” consisting of letters, numbers, underscores or hyphens."
        ]
    else:
        assert errors["key"] == ["This field cannot be blank."]
    assert row_counts() == before


def test_feature_key_is_unique():
    FeatureFactory(key="storage")
    before = row_counts()

    errors = refused(services.feature_create, key="storage", name="Storage again", kind="boolean")

    assert errors["key"] == ["Feature with this Key already exists."]
    assert row_counts() == before


def test_feature_key_cannot_change_once_created(storage):
    before = row_counts()

    errors = refused(services.feature_update, feature=storage, key="disk", name="Disk")

    assert errors["key"] == ["A feature's key cannot change once created (it is 'storage')."]
    storage.refresh_from_db()
    assert (storage.key, storage.name) == ("storage", "Storage")
    assert row_counts() == before


def test_feature_update_changes_the_name_but_keeps_the_key(storage):
    services.feature_update(feature=storage, key="storage", name="Cloud storage")

    storage.refresh_from_db()
    assert (storage.key, storage.name) == ("storage", "Cloud storage")


def test_feature_kind_cannot_change_once_a_plan_includes_it(plan, storage):
    PlanEntitlementFactory(plan=plan, feature=storage)
    before = row_counts()

    errors = refused(services.feature_update, feature=storage, kind="boolean", unit="")

    assert errors["kind"] == ["The kind of a feature that plans include cannot change."]
    storage.refresh_from_db()
    assert storage.kind == "metered"
    assert row_counts() == before


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"kind": "boolean", "unit": "GB"}, "unit", "Only a metered feature has a unit."),
        (
            {"kind": "config", "aggregation": "latest"},
            "aggregation",
            "Only a metered feature has an aggregation.",
        ),
    ],
)
def test_unit_and_aggregation_only_on_a_metered_feature(fields, field, message):
    before = row_counts()

    errors = refused(services.feature_create, key="gate", name="Gate", **fields)

    assert errors[field] == [message]
    assert row_counts() == before


# Metered entitlements


def test_metered_entitlement_needs_a_limit_or_unlimited(plan, storage):
    before = row_counts()

    errors = refused(services.plan_add_entitlement, plan=plan, feature=storage)

    assert errors["limit"] == ["A metered entitlement needs a limit, or tick unlimited."]
    assert row_counts() == before


def test_metered_entitlement_cannot_have_a_limit_and_be_unlimited(plan, storage):
    before = row_counts()

    errors = refused(
        services.plan_add_entitlement,
        plan=plan,
        feature=storage,
        limit=Decimal("100"),
        unlimited=True,
    )

    assert errors["limit"] == ["Leave the limit empty for an unlimited entitlement."]
    assert row_counts() == before


def test_metered_limit_cannot_be_negative(plan, storage):
    before = row_counts()

    errors = refused(services.plan_add_entitlement, plan=plan, feature=storage, limit=Decimal("-1"))

    assert errors["limit"] == ["Ensure this value is greater than or equal to 0."]
    assert row_counts() == before


def test_unlimited_metered_entitlement_is_saved(plan, storage):
    entitlement = services.plan_add_entitlement(plan=plan, feature=storage, unlimited=True)

    entitlement.refresh_from_db()
    assert entitlement.unlimited is True
    assert entitlement.limit is None


def test_overage_price_only_on_a_soft_limit(plan, storage):
    before = row_counts()

    errors = refused(
        services.plan_add_entitlement,
        plan=plan,
        feature=storage,
        limit=Decimal("100"),
        enforcement="hard",
        overage_price=Money("0.10", "USD"),
    )

    assert errors["overage_price"] == ["An overage price applies only to a soft limit."]
    assert row_counts() == before


def test_soft_limit_with_overage_price_is_saved(plan, storage):
    entitlement = services.plan_add_entitlement(
        plan=plan,
        feature=storage,
        limit=Decimal("500"),
        enforcement="soft",
        overage_price=Money("0.10", "USD"),
    )

    entitlement.refresh_from_db()
    assert entitlement.enforcement == "soft"
    assert entitlement.overage_price == Money("0.10", "USD")


# Boolean and config entitlements


@pytest.mark.parametrize("kind", ["boolean", "config"])
@pytest.mark.parametrize(
    "values",
    [{"limit": Decimal("100")}, {"unlimited": True}],
    ids=["limit", "unlimited"],
)
def test_limit_only_on_a_metered_feature(plan, kind, values):
    feature = FeatureFactory(kind=kind)
    before = row_counts()

    errors = refused(
        services.plan_add_entitlement,
        plan=plan,
        feature=feature,
        value="priority" if kind == "config" else "",
        **values,
    )

    assert errors["limit"] == ["A limit applies only to a metered feature."]
    assert row_counts() == before


@pytest.mark.parametrize("kind", ["boolean", "config"])
def test_overage_price_only_on_a_metered_feature(plan, kind):
    feature = FeatureFactory(kind=kind)
    before = row_counts()

    errors = refused(
        services.plan_add_entitlement,
        plan=plan,
        feature=feature,
        enforcement="soft",
        overage_price=Money("0.10", "USD"),
        value="priority" if kind == "config" else "",
    )

    assert errors["overage_price"] == ["An overage price applies only to a metered feature."]
    assert row_counts() == before


@pytest.mark.parametrize(
    "feature_fixture, values",
    [
        ("versioning", {}),
        ("storage", {"limit": Decimal("100")}),
    ],
    ids=["boolean", "metered"],
)
def test_value_only_on_a_config_feature(request, plan, feature_fixture, values):
    feature = request.getfixturevalue(feature_fixture)
    before = row_counts()

    errors = refused(
        services.plan_add_entitlement, plan=plan, feature=feature, value="priority", **values
    )

    assert errors["value"] == ["A value applies only to a config feature."]
    assert row_counts() == before


def test_config_entitlement_needs_a_value(plan, support_tier):
    before = row_counts()

    errors = refused(services.plan_add_entitlement, plan=plan, feature=support_tier, value="")

    assert errors["value"] == ["A config entitlement needs a value."]
    assert row_counts() == before


def test_one_entitlement_per_plan_and_feature(plan, versioning):
    services.plan_add_entitlement(plan=plan, feature=versioning)
    before = row_counts()

    errors = refused(services.plan_add_entitlement, plan=plan, feature=versioning, enabled=False)

    assert errors["__all__"] == ["This plan already has an entitlement for that feature."]
    assert PlanEntitlement.objects.filter(plan=plan, feature=versioning).count() == 1
    assert PlanEntitlement.objects.get(plan=plan, feature=versioning).enabled is True
    assert row_counts() == before


def test_the_same_feature_may_be_in_two_plans(plan, versioning):
    other = PlanFactory(key="business")

    services.plan_add_entitlement(plan=plan, feature=versioning)
    services.plan_add_entitlement(plan=other, feature=versioning)

    assert versioning.plan_entitlements.count() == 2


# notify_at


def test_notify_at_defaults_to_80_and_100(plan, storage):
    entitlement = services.plan_add_entitlement(plan=plan, feature=storage, limit=Decimal("100"))

    entitlement.refresh_from_db()
    assert entitlement.notify_at == [80, 100]


def test_notify_at_is_sorted_and_deduplicated(plan, storage):
    entitlement = services.plan_add_entitlement(
        plan=plan, feature=storage, limit=Decimal("100"), notify_at=[100, 50, 80, 50, 100]
    )

    entitlement.refresh_from_db()
    assert entitlement.notify_at == [50, 80, 100]


@pytest.mark.parametrize("empty", [None, ""])
def test_empty_notify_at_means_no_thresholds(plan, storage, empty):
    entitlement = services.plan_add_entitlement(
        plan=plan, feature=storage, limit=Decimal("100"), notify_at=empty
    )

    entitlement.refresh_from_db()
    assert entitlement.notify_at == []


@pytest.mark.parametrize(
    "notify_at",
    [[0], [101], [80, -5], [80.5], ["80"], [True], 80, "80", {"at": 80}],
    ids=repr,
)
def test_notify_at_must_be_whole_percentages_from_1_to_100(plan, storage, notify_at):
    before = row_counts()

    errors = refused(
        services.plan_add_entitlement,
        plan=plan,
        feature=storage,
        limit=Decimal("100"),
        notify_at=notify_at,
    )

    assert errors["notify_at"] == ["Thresholds are a list of whole percentages from 1 to 100."]
    assert row_counts() == before


# Plans


def test_plan_create_with_entitlements(storage, versioning, support_tier):
    plan = services.plan_create(
        key="business",
        name="Business Storage",
        price=Money("150.00", "USD"),
        rank=30,
        entitlements=[
            {"feature": storage, "limit": Decimal("1000"), "show_on_invoice": True},
            {"feature": versioning, "enabled": True},
            {"feature": support_tier, "value": "priority"},
        ],
    )

    plan.refresh_from_db()
    assert plan.price == Money("150.00", "USD")
    assert (plan.interval, plan.status) == ("month", "draft")
    summary = {
        e.feature.key: (e.enabled, e.limit, e.unlimited, e.value)
        for e in plan.entitlements.select_related("feature")
    }
    assert summary == {
        "storage": (True, Decimal("1000"), False, ""),
        "file-versioning": (True, None, False, ""),
        "support-tier": (True, None, False, "priority"),
    }
    assert plan.history.count() == 1
    assert PlanEntitlement.history.filter(plan_id=plan.pk).count() == 3


def test_plan_create_with_a_bad_entitlement_saves_nothing(storage, versioning):
    before = row_counts()

    errors = refused(
        services.plan_create,
        key="business",
        name="Business Storage",
        price=Money("150.00", "USD"),
        entitlements=[{"feature": versioning}, {"feature": storage}],
    )

    assert errors["limit"] == ["A metered entitlement needs a limit, or tick unlimited."]
    assert not Plan.objects.filter(key="business").exists()
    assert row_counts() == before


def test_plan_price_cannot_be_negative():
    before = row_counts()

    errors = refused(services.plan_create, key="odd", name="Odd", price=Money("-1.00", "USD"))

    assert errors["price"] == ["Ensure this value is greater than or equal to 0."]
    assert row_counts() == before


def test_plan_key_must_be_a_slug():
    before = row_counts()

    errors = refused(
        services.plan_create, key="basic plan", name="Basic", price=Money("50.00", "USD")
    )

    assert errors["key"] == [
        "Enter a valid “slug” consisting of letters, numbers, underscores or hyphens."
    ]
    assert row_counts() == before


def test_plan_update_keeps_history(plan):
    services.plan_update(plan=plan, price=Money("60.00", "USD"))

    plan.refresh_from_db()
    assert plan.price == Money("60.00", "USD")
    assert [h.price for h in plan.history.order_by("history_id")] == [
        Money("50.00", "USD"),
        Money("60.00", "USD"),
    ]


def test_plan_entitlement_update_refuses_bad_values_and_keeps_the_old_ones(plan, storage):
    entitlement = PlanEntitlementFactory(plan=plan, feature=storage, limit=Decimal("100"))
    before = row_counts()

    errors = refused(
        services.plan_entitlement_update,
        entitlement=entitlement,
        limit=None,
        unlimited=False,
    )

    assert errors["limit"] == ["A metered entitlement needs a limit, or tick unlimited."]
    entitlement.refresh_from_db()
    assert entitlement.limit == Decimal("100")
    assert row_counts() == before


def test_plan_entitlement_update_cannot_move_it_to_another_plan_or_feature(plan, storage):
    entitlement = PlanEntitlementFactory(plan=plan, feature=storage)
    other_plan = PlanFactory()

    services.plan_entitlement_update(
        entitlement=entitlement,
        plan=other_plan,
        feature=FeatureFactory(metered=True),
        limit=Decimal("200"),
    )

    entitlement.refresh_from_db()
    assert (entitlement.plan, entitlement.feature, entitlement.limit) == (
        plan,
        storage,
        Decimal("200"),
    )


def test_plan_entitlement_remove(plan, storage):
    entitlement = PlanEntitlementFactory(plan=plan, feature=storage)

    services.plan_entitlement_remove(entitlement=entitlement)

    assert not plan.entitlements.exists()
    assert PlanEntitlement.history.filter(history_type="-").count() == 1


# Top-up packs


def test_topup_pack_create_with_plans(storage, plan):
    business = PlanFactory(key="business")

    pack = services.topup_pack_create(
        key="extra-20-gb",
        name="Extra 20 GB",
        feature=storage,
        quantity=Decimal("20"),
        price=Money("10.00", "USD"),
        plans=[plan, business],
    )

    pack.refresh_from_db()
    assert (pack.quantity, pack.price, pack.expiry) == (
        Decimal("20"),
        Money("10.00", "USD"),
        "period_end",
    )
    assert set(pack.plans.values_list("key", flat=True)) == {"basic", "business"}


def test_topup_pack_only_for_a_metered_feature(versioning):
    before = row_counts()

    errors = refused(
        services.topup_pack_create,
        key="extra-versions",
        name="Extra versions",
        feature=versioning,
        quantity=Decimal("20"),
        price=Money("10.00", "USD"),
    )

    assert "A top-up pack is only for a metered feature." in errors["feature"]
    assert row_counts() == before


def test_topup_pack_quantity_must_be_positive(storage):
    before = row_counts()

    errors = refused(
        services.topup_pack_create,
        key="nothing",
        name="Nothing",
        feature=storage,
        quantity=Decimal("0"),
        price=Money("10.00", "USD"),
    )

    assert errors["quantity"] == ["Ensure this value is greater than or equal to 0.0001."]
    assert row_counts() == before


@pytest.mark.parametrize("expiry_days", [None, 0])
def test_expiry_in_days_needs_the_number_of_days(storage, expiry_days):
    before = row_counts()

    errors = refused(
        services.topup_pack_create,
        key="extra-20-gb",
        name="Extra 20 GB",
        feature=storage,
        quantity=Decimal("20"),
        price=Money("10.00", "USD"),
        expiry="days",
        expiry_days=expiry_days,
    )

    assert errors["expiry_days"] == ["Give the number of days after which the units expire."]
    assert row_counts() == before


@pytest.mark.parametrize("expiry", ["period_end", "never"])
def test_expiry_days_only_when_the_expiry_is_days(storage, expiry):
    before = row_counts()

    errors = refused(
        services.topup_pack_create,
        key="extra-20-gb",
        name="Extra 20 GB",
        feature=storage,
        quantity=Decimal("20"),
        price=Money("10.00", "USD"),
        expiry=expiry,
        expiry_days=30,
    )

    assert errors["expiry_days"] == ["Days apply only when the expiry is a number of days."]
    assert row_counts() == before


def test_topup_pack_expiring_after_days_is_saved(storage):
    pack = services.topup_pack_create(
        key="extra-20-gb",
        name="Extra 20 GB",
        feature=storage,
        quantity=Decimal("20"),
        price=Money("10.00", "USD"),
        expiry="days",
        expiry_days=30,
    )

    pack.refresh_from_db()
    assert (pack.expiry, pack.expiry_days) == ("days", 30)


def test_topup_pack_update_sets_plans_and_refuses_bad_expiry(storage, plan):
    pack = TopUpPackFactory(feature=storage)

    services.topup_pack_update(pack=pack, plans=[plan])
    before = row_counts()
    errors = refused(services.topup_pack_update, pack=pack, expiry="days", expiry_days=None)

    assert errors["expiry_days"] == ["Give the number of days after which the units expire."]
    pack.refresh_from_db()
    assert pack.expiry == "period_end"
    assert list(pack.plans.all()) == [plan]
    assert row_counts() == before


# The factories themselves make valid rows


def test_factory_defaults_pass_validation():
    rows = [
        FeatureFactory(),
        FeatureFactory(metered=True),
        FeatureFactory(latest=True),
        FeatureFactory(config=True),
        PlanFactory(),
        PlanEntitlementFactory(),
        PlanEntitlementFactory(metered=True),
        PlanEntitlementFactory(metered=True, soft=True),
        PlanEntitlementFactory(metered=True, unlimited=True),
        PlanEntitlementFactory(config=True),
        TopUpPackFactory(),
        TopUpPackFactory(expires_in_days=True),
        TopUpPackFactory(never_expires=True),
    ]

    for row in rows:
        row.full_clean()
