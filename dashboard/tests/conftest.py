"""Two customers of a small storage catalog, each with a dashboard login.

Basic ($50/month, rank 20): Storage 100 GB (a level), Data transfer 200 GB, Support tier
    "standard"; the "Extra 20 GB" storage top-up ($10) is offered on it.
Business ($150/month, rank 30): Storage 1,000 GB, Data transfer 500 GB, File versioning,
    Support tier "priority"; the "Business 100 GB" top-up is offered only on it.
Starter ($10/month, rank 10): Storage 20 GB. Secret (rank 50): active but not public.

Customer A ("acme") is on Basic with 85 GB stored; customer B ("globex") on Business.
"""

import datetime as dt
import itertools
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from djmoney.money import Money
from rest_framework.test import APIClient

from billing.services.subscriptions import subscription_create
from catalog.models import Aggregation, FeatureKind
from catalog.tests.factories import (
    FeatureFactory,
    PlanEntitlementFactory,
    PlanFactory,
    TopUpPackFactory,
)
from core.services import api_key_create
from customers.engine import usage_record_batch
from customers.models import Customer, CustomerUser, Notification

PASSWORD = "dashboard-test-password"
_events = itertools.count(1)


def report(customer: Customer, feature_key: str, quantity, *, at=None) -> None:
    """Reported usage (for a level, the new level) at `at` (default now)."""
    result = usage_record_batch(
        [
            {
                "event_id": f"dashboard-test-{next(_events)}",
                "customer": customer.external_id,
                "feature": feature_key,
                "quantity": str(quantity),
                "timestamp": at or timezone.now(),
            }
        ]
    )
    assert result.accepted == 1, result.rejected


def login_for(customer: Customer, username: str):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    CustomerUser.objects.create(user=user, customer=customer)
    return user


@dataclass
class World:
    basic: object
    business: object
    starter: object
    secret: object
    storage: object
    transfer: object
    versioning: object
    support_tier: object
    pack: object
    business_pack: object
    a: Customer
    b: Customer
    user_a: object
    user_b: object
    staff: object


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def period_start():
    """Midnight UTC ten days ago: the first period of both subscriptions starts here."""
    today = timezone.now().astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=10)


@pytest.fixture
def world(db, period_start) -> World:
    storage = FeatureFactory(
        key="storage",
        name="Storage",
        kind=FeatureKind.METERED,
        unit="GB",
        aggregation=Aggregation.LATEST,
    )
    transfer = FeatureFactory(
        key="data-transfer", name="Data transfer", kind=FeatureKind.METERED, unit="GB"
    )
    versioning = FeatureFactory(key="file-versioning", name="File versioning")
    support_tier = FeatureFactory(key="support-tier", name="Support tier", config=True)

    starter = PlanFactory(key="starter", name="Starter", price=Money("10.00", "USD"), rank=10)
    basic = PlanFactory(key="basic", name="Basic", price=Money("50.00", "USD"), rank=20)
    business = PlanFactory(key="business", name="Business", price=Money("150.00", "USD"), rank=30)
    secret = PlanFactory(
        key="secret", name="Secret", price=Money("900.00", "USD"), rank=50, public=False
    )
    for plan, storage_gb, transfer_gb in (
        (starter, "20", "50"),
        (basic, "100", "200"),
        (business, "1000", "500"),
        (secret, "9000", "9000"),
    ):
        PlanEntitlementFactory(plan=plan, feature=storage, limit=Decimal(storage_gb))
        PlanEntitlementFactory(plan=plan, feature=transfer, limit=Decimal(transfer_gb))
    PlanEntitlementFactory(plan=basic, feature=support_tier, value="standard")
    PlanEntitlementFactory(plan=business, feature=support_tier, value="priority")
    PlanEntitlementFactory(plan=business, feature=versioning, enabled=True)

    pack = TopUpPackFactory(
        key="extra-20-gb",
        name="Extra 20 GB",
        feature=storage,
        quantity=Decimal("20"),
        price=Money("10.00", "USD"),
        plans=[basic],
    )
    business_pack = TopUpPackFactory(
        key="business-100-gb",
        name="Business 100 GB",
        feature=storage,
        quantity=Decimal("100"),
        price=Money("40.00", "USD"),
        plans=[business],
    )

    a = Customer.objects.create(external_id="acme", name="Acme", email="ops@acme.test")
    b = Customer.objects.create(external_id="globex", name="Globex", email="it@globex.test")
    subscription_create(customer=a, plan=basic, at=period_start)
    subscription_create(customer=b, plan=business, at=period_start)
    report(a, "storage", "85")
    report(b, "storage", "300")

    staff = get_user_model().objects.create_user(
        username="staffer", password=PASSWORD, is_staff=True, is_superuser=True
    )
    return World(
        basic=basic,
        business=business,
        starter=starter,
        secret=secret,
        storage=storage,
        transfer=transfer,
        versioning=versioning,
        support_tier=support_tier,
        pack=pack,
        business_pack=business_pack,
        a=a,
        b=b,
        user_a=login_for(a, "alice"),
        user_b=login_for(b, "bob"),
        staff=staff,
    )


@pytest.fixture
def client_a(client, world):
    client.force_login(world.user_a)
    return client


def notification_for(customer: Customer, feature, *, threshold=80, status="sent") -> Notification:
    now = timezone.now()
    return Notification.objects.create(
        customer=customer,
        feature=feature,
        period_start=now - dt.timedelta(days=3),
        threshold=threshold,
        to=[customer.email],
        status=status,
        sent_at=now if status == "sent" else None,
        usage=Decimal("85"),
        limit=Decimal("100"),
        capacity=Decimal("100"),
        balance=Decimal("15"),
        unit="GB",
    )


@pytest.fixture
def runtime_api(db):
    """An API client with a runtime key: what the business's app server holds."""
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='app', scope='runtime')[1]}"
    )
    return client
