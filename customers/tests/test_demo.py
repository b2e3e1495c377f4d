"""`seed_demo`'s customers: one on every plan, an enterprise deal, a top-up, a month of usage,
the demo login on the customer near its storage cap; the same rows after a second run."""

from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command

from catalog.models import Plan
from customers import engine
from customers.demo import CUSTOMERS, DAYS
from customers.models import Customer, CustomerUser, UsageEvent
from customers.usage import usage_counters_rebuild

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # seed_demo sets the demo logins' passwords: a fast hasher keeps these tests quick.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def seed() -> None:
    call_command("seed_demo", stdout=StringIO())


def snapshot() -> dict[str, int]:
    """Row counts of every customers model, history tables included."""
    return {
        model._meta.label: model._default_manager.count()
        for model in apps.get_app_config("customers").get_models()
    }


def test_seed_demo_twice_gives_the_same_rows():
    seed()
    first = snapshot()

    seed()

    assert snapshot() == first
    assert first["customers.Customer"] == len(CUSTOMERS) == 8
    assert first["customers.Subscription"] == 8
    assert first["customers.UsageEvent"] == 8 * DAYS * 2


def test_the_demo_tells_the_story():
    seed()

    plans = set(Customer.objects.values_list("subscriptions__plan__key", flat=True))
    assert plans == set(Plan.objects.values_list("key", flat=True))

    northwind = Customer.objects.get(external_id="northwind")
    storage = engine.entitlement_check(northwind, "storage")
    assert (storage.source, storage.limit) == ("override", 2000)
    assert storage.usage > 1000  # more than Business includes: the deal is in use

    bakery = Customer.objects.get(external_id="maple-oak-bakery")
    grant = bakery.grants.get()
    assert (grant.source, grant.quantity, grant.topup_pack.key) == ("topup", 20, "extra-20-gb")
    assert engine.entitlement_check(bakery, "storage").granted == 20

    login = CustomerUser.objects.get(user__username="customer").customer
    storage = engine.entitlement_check(login, "storage")
    assert login.external_id == "bluebird-design"
    assert 80 <= storage.percent_used < 90

    summit = Customer.objects.get(external_id="summit-outdoor")
    assert engine.entitlement_check(summit, "data-transfer").overage > 0  # soft limit passed

    assert UsageEvent.objects.filter(feature__key="storage").count() == 8 * DAYS
    # The counters the seed left are those the ledger adds up to.
    assert usage_counters_rebuild(dry_run=True).drifts == []
