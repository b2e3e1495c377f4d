"""Reversals under real concurrency, on PostgreSQL (threads released together, each on its own
connection, committed data), and the consume's two-round-trip path writing the draw ledger.
SQLite serialises writers, so these are skipped there."""

from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from customers import engine
from customers.models import Grant, UsageCounter, UsageDraw, UsageEvent, UsageReversal
from customers.tests.factories import (
    CustomerFactory,
    FeatureFactory,
    GrantFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
)
from customers.tests.test_concurrency import run_together

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor == "sqlite", reason="SQLite serialises writers; run on PostgreSQL"
    ),
]


def customer_with(limit: str, granted: str):
    plan = PlanFactory()
    transfer = FeatureFactory(metered=True, key=f"transfer-{plan.pk}")
    PlanEntitlementFactory(plan=plan, feature=transfer, limit=Decimal(limit), notify_at=[])
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan, started_at=timezone.now())
    grant = GrantFactory(customer=customer, feature=transfer, quantity=Decimal(granted))
    return customer, transfer, grant


def ledger_agrees(customer, feature, grant, limit: Decimal) -> None:
    """The counter and the grant are what the ledger's unreversed events and draws say."""
    counted = UsageEvent.objects.filter(customer=customer, reversed_at=None)
    used = counted.aggregate(s=Sum("quantity"))["s"] or 0
    drawn = (
        UsageDraw.objects.filter(event__in=counted, grant=grant).aggregate(s=Sum("quantity"))["s"]
        or 0
    )
    counter = UsageCounter.objects.get(customer=customer, feature=feature)
    grant.refresh_from_db()
    assert (counter.used, counter.drawn, grant.consumed) == (used, drawn, drawn)
    assert counter.used - counter.drawn <= limit  # the hard limit held


def test_the_two_trip_consume_records_its_draws(django_assert_num_queries):
    customer, transfer, grant = customer_with("10", "10")
    engine.entitlement_consume(customer.external_id, transfer.key, "8", "warm-up")

    # The warm-up's one-trip attempt found the grant in force (it wrote nothing, and this
    # customer's consumes of the feature skip it for a while): BEGIN + locks, then the writes
    # and COMMIT
    with django_assert_num_queries(2):
        result = engine.entitlement_consume(customer.external_id, transfer.key, "5", "over")

    assert result.allowed and result.entitlement.balance == 7
    assert list(
        UsageDraw.objects.values_list("event__event_id", "grant", "window", "quantity")
    ) == [("over", grant.pk, "billing_period", Decimal("3"))]
    # A replay writes nothing more
    engine.entitlement_consume(customer.external_id, transfer.key, "5", "over")
    assert UsageDraw.objects.count() == 1


def test_the_two_trip_commit_of_a_reservation_records_its_draws():
    customer, transfer, grant = customer_with("10", "10")
    engine.entitlement_consume(customer.external_id, transfer.key, "8", "warm-up")
    engine.reservation_hold(customer.external_id, transfer.key, "job", "6")

    with CaptureQueriesContext(connection) as queries:
        engine.reservation_commit(customer.external_id, transfer.key, "job", "5")

    assert len(queries) == 2  # the two round trips
    assert list(UsageDraw.objects.values_list("event__event_id", "grant", "quantity")) == [
        ("job", grant.pk, Decimal("3"))
    ]
    assert engine.usage_reverse(customer.external_id, "job", reason="failed").created
    grant.refresh_from_db()
    assert grant.consumed == 0
    ledger_agrees(customer, transfer, grant, Decimal("10"))


def test_concurrent_reversals_of_one_event_give_back_once():
    customer, transfer, grant = customer_with("10", "10")
    engine.entitlement_consume(customer.external_id, transfer.key, "10", "allowance")
    engine.entitlement_consume(customer.external_id, transfer.key, "6", "from-grant")

    results = run_together(
        8,
        lambda i: (
            engine.usage_reverse(customer.external_id, "from-grant", reason=f"attempt {i}").created
        ),
    )

    assert sorted(results) == [False] * 7 + [True]
    assert UsageReversal.objects.count() == 1
    ledger_agrees(customer, transfer, grant, Decimal("10"))
    grant.refresh_from_db()
    assert grant.consumed == 0
    assert UsageCounter.objects.get(customer=customer, feature=transfer).used == 10


def test_concurrent_consumes_and_reversals_keep_the_counters_equal_to_the_ledger():
    # Given 20 of allowance used and 10 of a grant of 30
    customer, transfer, grant = customer_with("20", "30")
    for n in range(10):
        engine.entitlement_consume(customer.external_id, transfer.key, "3", f"old-{n}")
    ledger_agrees(customer, transfer, grant, Decimal("20"))

    # When 12 consumes of 1.5 and 6 reversals of the old events run at once
    def work(i: int):
        if i % 3 == 0:
            return engine.usage_reverse(customer.external_id, f"old-{i // 3}", reason="race")
        return engine.entitlement_consume(customer.external_id, transfer.key, "1.5", f"new-{i}")

    results = run_together(18, work)

    # Then every consume fitted, in whatever order they ran (18 asked, 50 - 30 = 20 left before
    # any reversal), and the counters, the draws and the grant agree with the ledger
    assert all(r.allowed for r in results if hasattr(r, "allowed"))
    assert UsageReversal.objects.count() == 6
    ledger_agrees(customer, transfer, grant, Decimal("20"))
    e = engine.entitlement_check(customer.external_id, transfer.key)
    assert e.usage == 30 - 18 + 18
    assert e.balance == 50 - e.usage


def test_reversing_everything_gives_back_every_grant_unit():
    customer, transfer, grant = customer_with("5", "50")
    ids = [f"e-{n}" for n in range(12)]
    run_together(
        12, lambda i: engine.entitlement_consume(customer.external_id, transfer.key, "3", ids[i])
    )
    grant.refresh_from_db()
    assert grant.consumed == 36 - 5

    run_together(12, lambda i: engine.usage_reverse(customer.external_id, ids[i], reason="all"))

    grant.refresh_from_db()
    counter = UsageCounter.objects.get(customer=customer, feature=transfer)
    assert (grant.consumed, counter.used, counter.drawn) == (0, 0, 0)
    assert Grant.objects.get(pk=grant.pk).remaining == 50
