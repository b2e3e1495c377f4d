"""A small storage catalog, a customer near the storage cap, and one login per role.

Personal ($10/month, rank 10): Storage 20 GB.
Basic ($50/month, rank 20): Storage 100 GB (a level), Data transfer 200 GB, Support tier
    "standard"; the "Extra 20 GB" storage top-up ($10) is offered on every plan.
Pro ($150/month, rank 30): Storage 1,000 GB, Data transfer 500 GB, File versioning.

Acme Corporation ("acme-001") is on Basic with 85 GB stored (85%: the warning colour).
"""

import itertools
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from djmoney.money import Money

from billing.services.subscriptions import subscription_create
from catalog.tests.factories import (
    FeatureFactory,
    PlanEntitlementFactory,
    PlanFactory,
    TopUpPackFactory,
)
from core.roles import PRODUCT_MANAGERS, SUPPORT
from customers import services as customer_services
from customers.engine import usage_record_batch
from customers.models import Customer

PASSWORD = "support-test-password"
_events = itertools.count(1)


def report(customer: Customer, feature_key: str, quantity) -> None:
    result = usage_record_batch(
        [
            {
                "event_id": f"support-test-{next(_events)}",
                "customer": customer.external_id,
                "feature": feature_key,
                "quantity": str(quantity),
            }
        ]
    )
    assert result.accepted == 1, result.rejected


def user_in(username: str, group: str | None = None, **fields):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, **fields)
    if group:
        # get_or_create: a transactional test before this one may have flushed the groups
        # that the data migrations made; the pages check the group's name only.
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@dataclass
class World:
    personal: object
    basic: object
    pro: object
    storage: object
    transfer: object
    versioning: object
    tier: object
    pack: object
    acme: Customer
    support: object
    pm: object
    end_customer: object


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(db) -> World:
    storage = FeatureFactory(key="storage", name="Storage", latest=True)
    transfer = FeatureFactory(key="data-transfer", name="Data transfer", metered=True)
    versioning = FeatureFactory(key="file-versioning", name="File versioning")
    tier = FeatureFactory(key="support-tier", name="Support tier", config=True)
    personal = PlanFactory(key="personal", name="Personal", price=Money("10.00", "USD"), rank=10)
    PlanEntitlementFactory(plan=personal, feature=storage, limit=Decimal("20"))
    basic = PlanFactory(key="basic", name="Basic", price=Money("50.00", "USD"), rank=20)
    PlanEntitlementFactory(plan=basic, feature=storage, limit=Decimal("100"))
    PlanEntitlementFactory(plan=basic, feature=transfer, limit=Decimal("200"))
    PlanEntitlementFactory(plan=basic, feature=tier, value="standard")
    pro = PlanFactory(key="pro", name="Pro", price=Money("150.00", "USD"), rank=30)
    PlanEntitlementFactory(plan=pro, feature=storage, limit=Decimal("1000"))
    PlanEntitlementFactory(plan=pro, feature=transfer, limit=Decimal("500"))
    PlanEntitlementFactory(plan=pro, feature=versioning)
    pack = TopUpPackFactory(
        key="extra-20-gb", name="Extra 20 GB", feature=storage, quantity=Decimal("20")
    )
    acme = customer_services.customer_create(
        external_id="acme-001", name="Acme Corporation", email="billing@acme.example"
    )
    subscription_create(customer=acme, plan=basic)
    report(acme, "storage", "85")
    end_customer = user_in("casey")
    customer_services.customer_user_link(user=end_customer, customer=acme)
    return World(
        personal=personal,
        basic=basic,
        pro=pro,
        storage=storage,
        transfer=transfer,
        versioning=versioning,
        tier=tier,
        pack=pack,
        acme=acme,
        support=user_in("sam", SUPPORT, is_staff=True, first_name="Sam"),
        pm=user_in("priya", PRODUCT_MANAGERS, is_staff=True),
        end_customer=end_customer,
    )


@pytest.fixture
def support_client(client, world):
    client.force_login(world.support)
    return client
