"""The database itself refuses rows that break the catalog rules, even when code saves without
full_clean (a raw .save(), a bulk load, a future bug)."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from djmoney.money import Money

from catalog.models import Feature, Plan, PlanEntitlement, TopUpPack

from .factories import FeatureFactory, PlanEntitlementFactory, PlanFactory, TopUpPackFactory

pytestmark = pytest.mark.django_db


def test_overage_price_on_a_hard_limit_is_refused():
    entitlement = PlanEntitlementFactory.build(
        plan=PlanFactory(),
        feature=FeatureFactory(metered=True),
        limit=Decimal("100"),
        enforcement="hard",
        overage_price=Money("0.10", "USD"),
    )

    with pytest.raises(IntegrityError), transaction.atomic():
        entitlement.save()

    assert PlanEntitlement.objects.count() == 0


def test_overage_price_on_a_soft_limit_is_accepted():
    entitlement = PlanEntitlementFactory.build(
        plan=PlanFactory(), feature=FeatureFactory(metered=True), soft=True
    )

    entitlement.save()

    assert PlanEntitlement.objects.get().overage_price == Money("0.10", "USD")


def test_second_entitlement_for_the_same_plan_and_feature_is_refused():
    first = PlanEntitlementFactory()
    second = PlanEntitlementFactory.build(plan=first.plan, feature=first.feature)

    with pytest.raises(IntegrityError), transaction.atomic():
        second.save()

    assert PlanEntitlement.objects.count() == 1


def test_negative_limit_is_refused():
    entitlement = PlanEntitlementFactory.build(
        plan=PlanFactory(), feature=FeatureFactory(metered=True), limit=Decimal("-1")
    )

    with pytest.raises(IntegrityError), transaction.atomic():
        entitlement.save()

    assert PlanEntitlement.objects.count() == 0


def test_zero_limit_is_accepted():
    PlanEntitlementFactory(metered=True, limit=Decimal("0"))

    assert PlanEntitlement.objects.get().limit == Decimal("0")


def test_limit_and_unlimited_together_are_refused():
    entitlement = PlanEntitlementFactory.build(
        plan=PlanFactory(),
        feature=FeatureFactory(metered=True),
        limit=Decimal("100"),
        unlimited=True,
    )

    with pytest.raises(IntegrityError), transaction.atomic():
        entitlement.save()

    assert PlanEntitlement.objects.count() == 0


def test_negative_plan_price_is_refused():
    plan = PlanFactory.build(price=Money("-0.01", "USD"))

    with pytest.raises(IntegrityError), transaction.atomic():
        plan.save()

    assert Plan.objects.count() == 0


def test_duplicate_feature_key_is_refused():
    FeatureFactory(key="storage")
    duplicate = FeatureFactory.build(key="storage")

    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()

    assert Feature.objects.count() == 1


def test_duplicate_plan_key_is_refused():
    PlanFactory(key="basic")
    duplicate = PlanFactory.build(key="basic")

    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()

    assert Plan.objects.count() == 1


@pytest.mark.parametrize("quantity", [Decimal("0"), Decimal("-20")])
def test_topup_pack_quantity_must_be_positive(quantity):
    pack = TopUpPackFactory.build(feature=FeatureFactory(metered=True), quantity=quantity)

    with pytest.raises(IntegrityError), transaction.atomic():
        pack.save()

    assert TopUpPack.objects.count() == 0


@pytest.mark.parametrize(
    "expiry, expiry_days",
    [("days", None), ("days", 0), ("period_end", 30), ("never", 30)],
)
def test_topup_expiry_days_iff_expiry_is_days(expiry, expiry_days):
    pack = TopUpPackFactory.build(
        feature=FeatureFactory(metered=True), expiry=expiry, expiry_days=expiry_days
    )

    with pytest.raises(IntegrityError), transaction.atomic():
        pack.save()

    assert TopUpPack.objects.count() == 0


def test_a_feature_in_a_plan_cannot_be_deleted():
    entitlement = PlanEntitlementFactory()

    with pytest.raises(IntegrityError), transaction.atomic():
        # PROTECT raises ProtectedError (an IntegrityError) before touching the row.
        entitlement.feature.delete()

    assert Feature.objects.filter(pk=entitlement.feature_id).exists()


def test_deleting_a_plan_deletes_its_entitlements():
    entitlement = PlanEntitlementFactory()

    entitlement.plan.delete()

    assert PlanEntitlement.objects.count() == 0
    assert Feature.objects.filter(pk=entitlement.feature_id).exists()
