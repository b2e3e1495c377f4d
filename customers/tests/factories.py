"""factory_boy factories for customers, on top of the catalog's. Every default is a valid row:

    CustomerFactory()                                   # billed in USD
    SubscriptionFactory(customer=c, plan=p, started_at=t)   # active; first period from t
    EntitlementOverrideFactory(customer=c, feature=f, limit=Decimal("500"))
    GrantFactory(customer=c, feature=f, quantity=Decimal("10"), expires_at=t)
    UsageEventFactory(customer=c, feature=f, quantity=Decimal("1"))   # the ledger row only

The factories save with the ORM, not through the services or the engine: a UsageEventFactory
row does not move any counter (the rebuild tests use that on purpose). Record usage with
`customers.engine` in tests of behaviour.
"""

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from catalog.selectors import plan_version_current
from catalog.tests.factories import (  # noqa: F401  (re-exported for customers' tests)
    FeatureFactory,
    PlanEntitlementFactory,
    PlanFactory,
    TopUpPackFactory,
)
from customers.models import (
    Customer,
    CustomerUser,
    EntitlementOverride,
    Grant,
    GrantSource,
    Subscription,
    SubscriptionStatus,
    UsageEvent,
)
from customers.periods import add_months, interval_months


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"customer-{n}")
    name = factory.Sequence(lambda n: f"Customer {n}")
    email = factory.LazyAttribute(lambda o: f"billing@{o.external_id}.test")
    currency = "USD"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user-{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.test")


class CustomerUserFactory(factory.django.DjangoModelFactory):
    """A dashboard login of one customer."""

    class Meta:
        model = CustomerUser

    user = factory.SubFactory(UserFactory)
    customer = factory.SubFactory(CustomerFactory)


class SubscriptionFactory(factory.django.DjangoModelFactory):
    """Active, its first period starting at `started_at` (monthly plans keep the anchor day)."""

    class Meta:
        model = Subscription

    customer = factory.SubFactory(CustomerFactory)
    plan = factory.SubFactory(PlanFactory)
    plan_version = factory.LazyAttribute(lambda o: plan_version_current(plan=o.plan))
    status = SubscriptionStatus.ACTIVE
    started_at = factory.LazyFunction(timezone.now)
    current_period_start = factory.SelfAttribute("started_at")
    current_period_end = factory.LazyAttribute(
        lambda o: add_months(o.started_at, interval_months(o.plan.interval))
    )


class EntitlementOverrideFactory(factory.django.DjangoModelFactory):
    """An enterprise deal on a metered feature: a hard limit of 500 for as long as it lasts."""

    class Meta:
        model = EntitlementOverride

    customer = factory.SubFactory(CustomerFactory)
    feature = factory.SubFactory(FeatureFactory, metered=True)
    enabled = True
    unlimited = False
    limit = factory.LazyAttribute(
        lambda o: None if o.unlimited or o.feature.kind != "metered" else Decimal("500")
    )
    value = factory.LazyAttribute(lambda o: "dedicated" if o.feature.kind == "config" else "")
    reason = "Enterprise deal, contract 2025-17"
    starts_at = None
    ends_at = None


class GrantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Grant

    customer = factory.SubFactory(CustomerFactory)
    feature = factory.SubFactory(FeatureFactory, metered=True)
    quantity = Decimal("10")
    consumed = Decimal("0")
    source = GrantSource.MANUAL
    reason = "Goodwill"
    effective_at = factory.LazyFunction(timezone.now)
    expires_at = None


class UsageEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = UsageEvent

    customer = factory.SubFactory(CustomerFactory)
    feature = factory.SubFactory(FeatureFactory, metered=True)
    event_id = factory.Sequence(lambda n: f"event-{n}")
    quantity = Decimal("1")
    timestamp = factory.LazyFunction(timezone.now)
