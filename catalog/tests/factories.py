"""factory_boy factories for the catalog. Every default is a valid row (it would pass the
services' full_clean), so a test states only what matters to it:

    FeatureFactory()                          # a boolean gate
    FeatureFactory(metered=True)              # "GB", summed per period
    FeatureFactory(latest=True)               # "GB", latest reported level (storage in use)
    FeatureFactory(config=True)               # a static value
    PlanEntitlementFactory(feature=storage)   # limit 100 for a metered feature, by kind
    PlanEntitlementFactory(metered=True, soft=True)   # soft limit with $0.10 per unit overage
    TopUpPackFactory(plans=[basic])           # 20 units for $10 of a metered feature

The factories save with the ORM, not through the services: to build an invalid row on purpose
use `.build()` and save it yourself.
"""

from decimal import Decimal

import factory
from djmoney.money import Money

from catalog.models import (
    Aggregation,
    Enforcement,
    Feature,
    FeatureKind,
    Plan,
    PlanEntitlement,
    PlanInterval,
    PlanStatus,
    Reset,
    TopUpExpiry,
    TopUpPack,
)
from catalog.selectors import plan_version_current
from catalog.services import plan_current_version_sync


class FeatureFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Feature

    key = factory.Sequence(lambda n: f"feature-{n}")
    name = factory.Sequence(lambda n: f"Feature {n}")
    description = ""
    kind = FeatureKind.BOOLEAN
    unit = ""
    aggregation = Aggregation.SUM

    class Params:
        metered = factory.Trait(kind=FeatureKind.METERED, unit="GB", aggregation=Aggregation.SUM)
        latest = factory.Trait(kind=FeatureKind.METERED, unit="GB", aggregation=Aggregation.LATEST)
        config = factory.Trait(kind=FeatureKind.CONFIG)


class PlanFactory(factory.django.DjangoModelFactory):
    """A plan with its version 1, published, at the plan's price (as plan_create makes it)."""

    class Meta:
        model = Plan
        skip_postgeneration_save = True

    key = factory.Sequence(lambda n: f"plan-{n}")
    name = factory.Sequence(lambda n: f"Plan {n}")
    description = ""
    price = Money("50.00", "USD")
    interval = PlanInterval.MONTH
    status = PlanStatus.ACTIVE
    public = True
    rank = factory.Sequence(lambda n: (n + 1) * 10)

    @factory.post_generation
    def version(self, create, extracted, **kwargs):
        if create:
            plan_current_version_sync(plan=self)


def _limit_for(entitlement) -> Decimal | None:
    if entitlement.feature.kind == FeatureKind.METERED and not entitlement.unlimited:
        return Decimal("100")
    return None


def _value_for(entitlement) -> str:
    return "priority" if entitlement.feature.kind == FeatureKind.CONFIG else ""


class PlanEntitlementFactory(factory.django.DjangoModelFactory):
    """The values follow the feature's kind: a metered feature gets a hard limit of 100, a config
    feature the value "priority", a boolean feature is enabled."""

    class Meta:
        model = PlanEntitlement

    plan = factory.SubFactory(PlanFactory)
    # The plan's published version unless a test gives one (a draft's, say).
    version = factory.LazyAttribute(lambda o: plan_version_current(plan=o.plan))
    feature = factory.SubFactory(FeatureFactory)
    enabled = True
    unlimited = False
    limit = factory.LazyAttribute(_limit_for)
    reset = Reset.BILLING_PERIOD
    enforcement = Enforcement.HARD
    overage_price = None
    notify_at = factory.LazyFunction(lambda: [80, 100])
    value = factory.LazyAttribute(_value_for)
    show_on_invoice = False

    class Params:
        metered = factory.Trait(feature=factory.SubFactory(FeatureFactory, metered=True))
        config = factory.Trait(feature=factory.SubFactory(FeatureFactory, config=True))
        soft = factory.Trait(enforcement=Enforcement.SOFT, overage_price=Money("0.10", "USD"))


class TopUpPackFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TopUpPack
        skip_postgeneration_save = True

    key = factory.Sequence(lambda n: f"topup-{n}")
    name = factory.Sequence(lambda n: f"Extra 20 GB ({n})")
    feature = factory.SubFactory(FeatureFactory, metered=True)
    quantity = Decimal("20")
    price = Money("10.00", "USD")
    expiry = TopUpExpiry.PERIOD_END
    expiry_days = None
    active = True

    class Params:
        expires_in_days = factory.Trait(expiry=TopUpExpiry.DAYS, expiry_days=30)
        never_expires = factory.Trait(expiry=TopUpExpiry.NEVER)

    @factory.post_generation
    def plans(self, create, extracted, **kwargs):
        """TopUpPackFactory(plans=[plan, ...]); none means offered on every plan."""
        if create and extracted:
            self.plans.set(extracted)
