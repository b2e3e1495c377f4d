"""Plan versions as customers live them: webhooks say nothing of a draft; on PostgreSQL,
concurrent drafts and publishes of one plan end in one of each, and a migrate racing a
subscription change leaves every subscriber on exactly one version."""

from decimal import Decimal

import pytest
from django.db import connection

from catalog import services as catalog_services
from catalog.models import PlanEntitlement, PlanVersion
from core.errors import Conflict
from customers.engine import entitlement_check
from customers.models import Subscription
from customers.tests.factories import (
    CustomerFactory,
    FeatureFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
)
from customers.tests.notification_helpers import receiver_start, storage_given
from customers.tests.test_concurrency import run_together
from customers.tests.test_webhooks import SECRET, endpoint_for

ON_POSTGRESQL = pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite serialises writers; run on PostgreSQL"
)


@pytest.fixture
def receiver():
    receiver = receiver_start(SECRET)
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.mark.django_db
def test_a_draft_posts_no_webhook_until_it_is_published(
    receiver, django_capture_on_commit_callbacks
):
    storage = storage_given()
    endpoint_for(receiver)

    with django_capture_on_commit_callbacks(execute=True):
        draft = catalog_services.plan_version_draft_create(plan=storage.plan)
        row = PlanEntitlement.objects.get(version=draft, feature=storage.feature)
        catalog_services.plan_entitlement_update(entitlement=row, limit=Decimal("5"))
    assert receiver.events("entitlement.updated") == []

    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.plan_entitlement_update(
            entitlement=storage.entitlement, limit=Decimal("7")
        )
    assert [e["data"]["values"]["limit"] for e in receiver.events("entitlement.updated")] == ["7"]


def _plan_with_subscribers(n: int):
    transfer = FeatureFactory(key="transfer", metered=True)
    plan = PlanFactory(key="team")
    PlanEntitlementFactory(plan=plan, feature=transfer, limit=Decimal("100"))
    subscriptions = [SubscriptionFactory(plan=plan, customer=CustomerFactory()) for _ in range(n)]
    return plan, subscriptions


def _outcome(work):
    try:
        return work()
    except Conflict as conflict:
        return conflict.code


@ON_POSTGRESQL
@pytest.mark.django_db(transaction=True)
def test_concurrent_drafts_of_one_plan_make_one():
    plan, _ = _plan_with_subscribers(1)

    outcomes = run_together(
        6, lambda i: _outcome(lambda: catalog_services.plan_version_draft_create(plan=plan))
    )

    assert sorted(o if isinstance(o, str) else "made" for o in outcomes) == [
        *["draft_exists"] * 5,
        "made",
    ]
    assert PlanVersion.objects.filter(plan=plan, status="draft").count() == 1


@ON_POSTGRESQL
@pytest.mark.django_db(transaction=True)
def test_concurrent_publishes_of_one_draft_publish_it_once():
    plan, subscriptions = _plan_with_subscribers(5)
    draft = catalog_services.plan_version_draft_create(plan=plan)
    PlanEntitlement.objects.filter(version=draft).update(limit=Decimal("10"))

    outcomes = run_together(
        4,
        lambda i: _outcome(
            lambda: catalog_services.plan_version_publish(version=draft, existing="migrate")
        ),
    )

    assert sorted(outcomes, key=str) == [
        5,
        "version_not_draft",
        "version_not_draft",
        "version_not_draft",
    ]
    assert list(plan.versions.order_by("number").values_list("status", flat=True)) == [
        "superseded",
        "published",
    ]
    assert set(Subscription.objects.values_list("plan_version", flat=True)) == {draft.pk}
    for subscription in subscriptions:
        assert entitlement_check(subscription.customer, "transfer").limit == Decimal("10")
