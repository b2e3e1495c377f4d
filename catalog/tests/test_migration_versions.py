"""Moving existing data to plan versions changes no answer (issue 19): every effective
entitlement E of every customer, and every price a subscriber pays, are the same before and
after catalog 0007 / customers 0014.

The data is built as the schema before versions could hold it (one set of terms per plan), the
answers are computed, the database is taken back to that schema (catalog 0006, customers 0013:
the version tables and columns are gone) and forward again through the data migrations, and
every answer is computed again."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from djmoney.money import Money

from billing.services.subscriptions import subscription_create
from catalog.models import PlanVersion
from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory, PlanFactory
from customers import services as customer_services
from customers.engine import caches_clear, entitlements_resolve, usage_record_batch
from customers.models import Customer, Subscription

BEFORE_VERSIONS = [("catalog", "0006_decimal_bounds"), ("customers", "0014_subscription_past_due")]


def build_world() -> None:
    """Two plans with an entitlement of every kind (hard, soft with an overage price, unlimited,
    a level, weekly and daily resets, a gate, a value); customers with usage past a soft limit,
    an override, a grant, a cancelled subscription, and none."""
    storage = FeatureFactory(key="storage", name="Storage", latest=True)
    transfer = FeatureFactory(key="transfer", name="Transfer", metered=True)
    calls = FeatureFactory(key="calls", name="API calls", metered=True)
    seats = FeatureFactory(key="seats", name="Seats", config=True)
    sso = FeatureFactory(key="sso", name="SSO")
    basic = PlanFactory(key="basic", price=Money("50.00", "USD"), rank=10)
    PlanEntitlementFactory(plan=basic, feature=storage, limit=Decimal("100"))
    PlanEntitlementFactory(plan=basic, feature=transfer, limit=Decimal("20"), soft=True)
    PlanEntitlementFactory(plan=basic, feature=calls, limit=Decimal("1000"), reset="day")
    PlanEntitlementFactory(plan=basic, feature=seats, value="5")
    PlanEntitlementFactory(plan=basic, feature=sso, enabled=False)
    pro = PlanFactory(key="pro", price=Money("150.00", "USD"), rank=20)
    PlanEntitlementFactory(plan=pro, feature=storage, limit=Decimal("1000"))
    PlanEntitlementFactory(plan=pro, feature=transfer, unlimited=True, limit=None)
    PlanEntitlementFactory(plan=pro, feature=calls, limit=Decimal("5000"), reset="week")
    PlanEntitlementFactory(plan=pro, feature=sso)
    events = []
    for n, plan in enumerate([basic, basic, pro, pro, basic]):
        customer = customer_services.customer_create(external_id=f"c{n}", name=f"C{n}")
        subscription_create(customer=customer, plan=plan)
        for feature, quantity in (("storage", 40 + n), ("transfer", 15 + 4 * n), ("calls", n)):
            event = {"event_id": f"{n}-{feature}", "customer": f"c{n}", "feature": feature}
            events.append({**event, "quantity": str(quantity)})
    usage_record_batch(events)
    c1 = Customer.objects.get(external_id="c1")
    customer_services.override_create(
        customer=c1, feature=transfer, reason="deal", limit=Decimal("500"), enforcement="hard"
    )
    customer_services.grant_create(customer=c1, feature=storage, quantity=Decimal("25"))
    c4 = Customer.objects.get(external_id="c4")
    customer_services.subscription_cancel(subscription=c4.subscriptions.get(), at_period_end=False)
    customer_services.customer_create(external_id="c5", name="No plan")


def answers(at: dt.datetime) -> dict:
    caches_clear()
    return {
        "entitlements": {
            c.external_id: entitlements_resolve(c, at=at) for c in Customer.objects.order_by("pk")
        },
        "prices": {
            s.pk: (s.plan.key, s.plan.price) for s in Subscription.objects.select_related("plan")
        },
    }


def migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)


@pytest.mark.django_db(transaction=True)
def test_every_answer_is_the_same_after_moving_to_versions():
    build_world()
    at = timezone.now()
    before = answers(at)
    assert sum(len(es) for es in before["entitlements"].values()) == 18

    migrate(BEFORE_VERSIONS)
    tables = connection.introspection.table_names()
    assert "catalog_planversion" not in tables  # the schema as it was before versions
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    after = answers(at)
    assert after == before
    # Every plan is on its version 1, published, at its price, with every entitlement; every
    # subscription (ended ones too) is on it and pays that price.
    for version in PlanVersion.objects.select_related("plan"):
        assert (version.number, version.status) == (1, "published")
        assert version.price == version.plan.price
        assert version.entitlements.count() == version.plan.entitlements.count()
    for subscription in Subscription.objects.select_related("plan_version", "plan"):
        assert subscription.plan_version.plan_id == subscription.plan_id
        assert subscription.plan_version.price == subscription.plan.price
