import datetime as dt

import pytest
from djmoney.money import Money

from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory, PlanFactory
from customers.tests.factories import CustomerFactory

from .factories import metered_entitlement

UTC = dt.UTC


def at(year, month, day, hour=9, minute=0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def basic(db):
    """Basic, $10.50 a month: 100 GB storage (a level), 50 GB transfer (soft, $0.25/GB)."""
    plan = PlanFactory(key="basic", name="Basic", price=Money("10.50", "USD"), rank=10)
    storage = metered_entitlement(plan, "storage", latest=True, limit="100")
    metered_entitlement(plan, "transfer", limit="50", soft_price="0.25")
    PlanEntitlementFactory(
        plan=plan,
        feature=FeatureFactory(key="hd-video", name="HD video"),
        show_on_invoice=True,
    )
    PlanEntitlementFactory(
        plan=plan,
        feature=FeatureFactory(key="seats", name="Seats", kind="config"),
        value="10",
        show_on_invoice=True,
    )
    # Listed nowhere: show_on_invoice is off.
    PlanEntitlementFactory(plan=plan, feature=FeatureFactory(key="encryption", name="Encryption"))
    plan.storage = storage.feature
    return plan


@pytest.fixture
def pro(basic):
    """Pro, $50 a month, the next tier up: 500 GB storage, 200 GB transfer (soft, $0.20/GB)."""
    plan = PlanFactory(key="pro", name="Pro", price=Money("50.00", "USD"), rank=20)
    storage = basic.entitlements.get(feature__key="storage").feature
    transfer = basic.entitlements.get(feature__key="transfer").feature
    metered_entitlement(plan, "storage", feature=storage, latest=True, limit="500")
    metered_entitlement(plan, "transfer", feature=transfer, limit="200", soft_price="0.20")
    return plan


@pytest.fixture
def customer(db):
    return CustomerFactory(name="Acme Ltd", external_id="acme", email="billing@acme.test")
