"""The customers admin as support agents and product managers use it (staff users in their
group, never superusers)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse

from core.roles import PRODUCT_MANAGERS, SUPPORT
from customers import engine
from customers.models import (
    Customer,
    CustomerUser,
    EntitlementOverride,
    Grant,
    Subscription,
    UsageCounter,
    UsageEvent,
)
from customers.tests.factories import (
    CustomerFactory,
    EntitlementOverrideFactory,
    FeatureFactory,
    GrantFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

MODELS = [
    "customer",
    "subscription",
    "entitlementoverride",
    "grant",
    "usageevent",
    "usagecounter",
]
START = datetime(2025, 1, 31, 10, tzinfo=UTC)


def staff_user(username: str, group: str):
    # No password: the tests log in with force_login (hashing one costs a quarter second).
    user = get_user_model().objects.create_user(username=username, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def support_user():
    return staff_user("sam", SUPPORT)


@pytest.fixture
def support_client(client, support_user):
    client.force_login(support_user)
    return client


@pytest.fixture
def pm_client(client):
    client.force_login(staff_user("priya", PRODUCT_MANAGERS))
    return client


@pytest.fixture
def acme():
    """A customer with something in every inline and a day of usage."""
    plan = PlanFactory(name="Business Storage")
    storage = FeatureFactory(key="storage", name="Storage", latest=True)
    PlanEntitlementFactory(plan=plan, feature=storage, limit=Decimal("1000"))
    customer = CustomerFactory(external_id="acme", name="Acme Corp", email="ops@acme.test")
    SubscriptionFactory(customer=customer, plan=plan, started_at=START)
    EntitlementOverrideFactory(customer=customer, feature=storage, limit=Decimal("2000"))
    GrantFactory(customer=customer, feature=storage, quantity=Decimal("20"), source="topup")
    CustomerUser.objects.create(user=UserFactory(username="casey"), customer=customer)
    engine.usage_record_batch(
        [
            {
                "event_id": "day-1",
                "customer": "acme",
                "feature": "storage",
                "quantity": "850",
                "timestamp": "2025-02-01T00:00:00Z",
            }
        ]
    )
    return customer


def override_formset(**first) -> dict:
    """The POST data of the customer page with one new override in its inline."""
    return {
        "external_id": "acme",
        "name": "Acme Corp",
        "email": "ops@acme.test",
        "notification_emails": "",
        "currency": "USD",
        **{f"{p}-TOTAL_FORMS": "0" for p in ("subscriptions", "grants", "users")},
        **{f"{p}-INITIAL_FORMS": "0" for p in ("subscriptions", "grants", "users")},
        "overrides-TOTAL_FORMS": "1",
        "overrides-INITIAL_FORMS": "0",
        **{f"overrides-0-{k}": v for k, v in first.items()},
    }


@pytest.mark.parametrize("model", MODELS)
def test_support_opens_every_list(support_client, acme, model):
    response = support_client.get(reverse(f"admin:customers_{model}_changelist"))

    assert response.status_code == 200


@pytest.mark.parametrize("model", MODELS)
def test_product_managers_see_every_list_read_only(pm_client, acme, model):
    assert pm_client.get(reverse(f"admin:customers_{model}_changelist")).status_code == 200
    assert pm_client.get(reverse(f"admin:customers_{model}_add")).status_code == 403


def test_support_finds_a_customer_by_name_email_or_external_id(support_client, acme):
    CustomerFactory(name="Globex")
    url = reverse("admin:customers_customer_changelist")

    for query in ("acme corp", "ops@acme", "acme"):
        page = support_client.get(url, {"q": query}).content.decode()
        assert "Acme Corp" in page and "Globex" not in page
    # The list shows each customer's current plan.
    assert "Business Storage" in support_client.get(url).content.decode()


def test_the_customer_page_shows_subscription_overrides_grants_and_logins(support_client, acme):
    page = support_client.get(reverse("admin:customers_customer_change", args=[acme.pk]))

    text = page.content.decode()
    assert page.status_code == 200
    for expected in ("Business Storage", "Enterprise deal", "casey", 'value="20.0000"'):
        assert expected in text


def test_support_adds_an_override_on_the_customer_page_and_is_recorded_as_its_author(
    support_client, support_user, acme
):
    transfer = FeatureFactory(key="data-transfer", metered=True)

    response = support_client.post(
        reverse("admin:customers_customer_change", args=[acme.pk]),
        override_formset(
            feature=transfer.pk,
            reason="Q3 migration project",
            enabled="on",
            limit="5000",
            reset="billing_period",
            enforcement="hard",
            notify_at="[80, 100]",
        ),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    override = EntitlementOverride.objects.get(feature=transfer)
    assert (override.limit, override.reason, override.created_by) == (
        5000,
        "Q3 migration project",
        support_user,
    )
    assert override.history.count() == 1
    assert engine.entitlement_check(acme, "data-transfer").source == "override"


def test_an_override_without_a_reason_is_refused(support_client, acme):
    transfer = FeatureFactory(key="data-transfer", metered=True)

    response = support_client.post(
        reverse("admin:customers_customer_change", args=[acme.pk]),
        override_formset(
            feature=transfer.pk,
            reason="",
            limit="5000",
            reset="billing_period",
            enforcement="hard",
            notify_at="[80, 100]",
        ),
    )

    assert response.status_code == 200
    assert not EntitlementOverride.objects.filter(feature=transfer).exists()


def test_an_override_limit_on_a_boolean_feature_is_refused(support_client, acme):
    versioning = FeatureFactory(key="file-versioning")

    response = support_client.post(
        reverse("admin:customers_entitlementoverride_add"),
        {
            "customer": acme.pk,
            "feature": versioning.pk,
            "reason": "Trial",
            "enabled": "on",
            "limit": "10",
            "reset": "billing_period",
            "enforcement": "hard",
            "notify_at": "[]",
            "overage_price_0": "",
            "overage_price_1": "USD",
        },
    )

    assert response.status_code == 200
    assert "A limit applies only to a metered feature." in response.content.decode()
    assert not EntitlementOverride.objects.filter(feature=versioning).exists()


def test_support_grants_units_and_voids_them(support_client, support_user, acme):
    storage = acme.grants.get().feature

    response = support_client.post(
        reverse("admin:customers_grant_add"),
        {
            "customer": acme.pk,
            "feature": storage.pk,
            "quantity": "50",
            "source": "manual",
            "reason": "Apology for the outage",
            "effective_at_0": "2025-02-01",
            "effective_at_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    grant = Grant.objects.get(reason="Apology for the outage")
    assert (grant.quantity, grant.created_by) == (50, support_user)

    support_client.post(
        reverse("admin:customers_grant_changelist"),
        {"action": "void", "_selected_action": [grant.pk]},
    )

    grant.refresh_from_db()
    assert grant.voided_at is not None


def test_support_schedules_a_downgrade_and_a_cancel_but_not_the_plan_itself(support_client, acme):
    subscription = acme.subscriptions.get()
    smaller = PlanFactory(name="Basic Storage")
    url = reverse("admin:customers_subscription_change", args=[subscription.pk])

    response = support_client.post(
        url, {"scheduled_plan": smaller.pk, "cancel_at_period_end": "on"}
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    subscription.refresh_from_db()
    assert (subscription.scheduled_plan, subscription.cancel_at_period_end) == (smaller, True)
    assert subscription.plan.name == "Business Storage"
    assert support_client.get(reverse("admin:customers_subscription_add")).status_code == 403


def test_the_usage_ledger_is_read_only_even_for_a_superuser(admin_client, acme):
    event = UsageEvent.objects.get()
    counter = UsageCounter.objects.first()

    assert admin_client.get(reverse("admin:customers_usageevent_add")).status_code == 403
    change = admin_client.get(reverse("admin:customers_usageevent_change", args=[event.pk]))
    assert change.status_code == 200 and 'name="quantity"' not in change.content.decode()
    response = admin_client.post(reverse("admin:customers_usageevent_delete", args=[event.pk]))
    assert response.status_code == 403
    assert (
        admin_client.get(
            reverse("admin:customers_usagecounter_delete", args=[counter.pk])
        ).status_code
        == 403
    )
    assert UsageEvent.objects.count() == 1


def test_usage_events_filter_by_feature_date_and_customer(support_client, acme):
    other = CustomerFactory(name="Globex")
    engine.usage_record_batch(
        [
            {
                "event_id": "globex-1",
                "customer": other.external_id,
                "feature": "storage",
                "quantity": "5",
                "timestamp": "2025-03-05T00:00:00Z",
            }
        ]
    )
    url = reverse("admin:customers_usageevent_changelist")
    storage = FeatureFactory._meta.model.objects.get(key="storage")

    def event_ids(**params):
        page = support_client.get(url, params)
        assert page.status_code == 200
        return {e.event_id for e in page.context["cl"].result_list}

    assert event_ids() == {"day-1", "globex-1"}
    assert event_ids(feature__id__exact=storage.pk) == {"day-1", "globex-1"}
    assert event_ids(timestamp__year=2025, timestamp__month=3) == {"globex-1"}
    assert event_ids(customer__id__exact=acme.pk) == {"day-1"}
    assert event_ids(q="globex") == {"globex-1"}


def test_the_customer_list_costs_the_same_queries_with_more_customers(
    support_client, acme, django_assert_max_num_queries
):
    plan = Subscription.objects.get().plan
    SubscriptionFactory.create_batch(20, plan=plan)

    with django_assert_max_num_queries(12):
        response = support_client.get(reverse("admin:customers_customer_changelist"))

    assert response.status_code == 200
    assert Customer.objects.count() == 21


def test_support_reads_the_history_of_a_customer_subscription_override_and_grant(
    support_client, acme
):
    rows = {
        "customer": acme,
        "subscription": acme.subscriptions.get(),
        "entitlementoverride": acme.overrides.get(),
        "grant": acme.grants.get(),
    }

    for model, row in rows.items():
        page = support_client.get(reverse(f"admin:customers_{model}_history", args=[row.pk]))
        assert page.status_code == 200, model


def test_a_subscribed_customers_currency_and_external_id_are_read_only(support_client, acme):
    page = support_client.get(reverse("admin:customers_customer_change", args=[acme.pk]))

    form = page.context["adminform"].form
    assert "currency" not in form.fields and "external_id" not in form.fields
    assert "name" in form.fields


def test_a_usage_event_says_where_its_units_went_and_who_reversed_it(support_client, acme):
    # Given a sum past its allowance of 10 into a grant of 5 and beyond, then reversed
    transfer = FeatureFactory(key="data-transfer", name="Data transfer", metered=True)
    plan = acme.subscriptions.get().plan
    PlanEntitlementFactory(plan=plan, feature=transfer, limit=Decimal("10"), enforcement="soft")
    grant = GrantFactory(customer=acme, feature=transfer, quantity=Decimal("5"))
    engine.entitlement_consume(acme, "data-transfer", "18", "big-job")
    engine.usage_reverse(acme, "big-job", reason="Ticket 77", api_key_name="billing-app")
    event = UsageEvent.objects.get(event_id="big-job")

    html = support_client.get(
        reverse("admin:customers_usageevent_change", args=[event.pk])
    ).content.decode()

    assert f"allowance 10, grant #{grant.pk} 5, overage 3" in html
    assert "by API key billing-app: Ticket 77" in html
    listing = support_client.get(reverse("admin:customers_usageevent_changelist"))
    assert listing.status_code == 200
