"""Reservations under real concurrency, on PostgreSQL (DESIGN.md "Reservations"): threads on
their own connections released together by a barrier, against committed data. SQLite
serialises writers, so these are skipped there.

200 holds race in each run. The server allows 100 connections, shared with other test runs,
so they come from 40 threads (each its own connection) making 5 holds each, all at once."""

from decimal import Decimal

import pytest
from django.db import connection

from core.errors import Conflict
from customers import engine
from customers.models import Reservation, UsageCounter, UsageEvent
from customers.tests.factories import (
    CustomerFactory,
    FeatureFactory,
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

THREADS, EACH = 40, 5  # 200 requests at once


def customer_with(limit: str):
    plan = PlanFactory()
    transfer = FeatureFactory(metered=True, key=f"transfer-{plan.pk}")
    PlanEntitlementFactory(plan=plan, feature=transfer, limit=Decimal(limit))
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan)
    return customer, transfer


def period_used(customer, feature) -> Decimal:
    return UsageCounter.objects.get(
        customer=customer, feature=feature, window="billing_period"
    ).used


@pytest.mark.parametrize("run", range(10))
def test_200_concurrent_holds_of_1_against_a_balance_of_100_hold_exactly_100(run):
    # Given a hard limit of 100 units, nothing used or held
    customer, transfer = customer_with("100")

    # When 200 holds of 1 arrive at once
    def holds(thread: int) -> list[bool]:
        return [
            engine.reservation_hold(
                customer.external_id, transfer.key, f"h-{thread}-{n}", "1", ttl_seconds=600
            ).allowed
            for n in range(EACH)
        ]

    outcomes = [allowed for made in run_together(THREADS, holds) for allowed in made]

    # Then exactly 100 are held, and the check says so
    assert len(outcomes) == 200 and outcomes.count(True) == 100
    assert Reservation.objects.filter(customer=customer, status="held").count() == 100
    e = engine.entitlement_check(customer.external_id, transfer.key)
    assert (e.reserved, e.balance, e.holds) == (Decimal("100"), Decimal("0"), 100)


def test_concurrent_consumes_and_holds_never_exceed_the_balance_together():
    # Given a hard limit of 100 units
    customer, transfer = customer_with("100")

    # When 100 holds of 1 and 100 consumes of 1 arrive at once, interleaved
    def work(thread: int) -> list[tuple[str, bool]]:
        done = []
        for n in range(EACH):
            if (thread + n) % 2:
                result = engine.reservation_hold(customer, transfer, f"h-{thread}-{n}", "1")
                done.append(("hold", result.allowed))
            else:
                result = engine.entitlement_consume(customer, transfer, "1", f"c-{thread}-{n}")
                done.append(("consume", result.allowed))
        return done

    outcomes = [o for made in run_together(THREADS, work) for o in made]

    # Then exactly 100 units are taken between them: held plus used is the balance
    held = sum(1 for kind, allowed in outcomes if kind == "hold" and allowed)
    used = sum(1 for kind, allowed in outcomes if kind == "consume" and allowed)
    assert held + used == 100
    assert Reservation.objects.filter(customer=customer, status="held").count() == held
    assert UsageEvent.objects.filter(customer=customer).count() == used
    assert period_used(customer, transfer) == used
    e = engine.entitlement_check(customer, transfer)
    assert (e.usage, e.reserved, e.balance) == (Decimal(used), Decimal(held), Decimal("0"))


def test_concurrent_commits_record_each_hold_once_and_free_the_rest():
    # Given 100 holds of 1 that took the whole balance
    customer, transfer = customer_with("100")
    for n in range(100):
        assert engine.reservation_hold(customer, transfer, f"h-{n}", "1").allowed

    # When each is committed at 0.5, twice over, all at once (with consumes racing for the
    # units the commits free)
    def work(thread: int) -> list[bool]:
        done = []
        for n in range(EACH):
            index = (thread * EACH + n) % 100
            engine.reservation_commit(customer, transfer, f"h-{index}", "0.5")
            done.append(
                engine.entitlement_consume(customer, transfer, "1", f"c-{thread}-{n}").allowed
            )
        return done

    consumed = [allowed for made in run_together(THREADS, work) for allowed in made].count(True)

    # Then 50 units are used by commits, each recorded once, and the consumes took at most
    # the 50 the commits gave back
    commits = UsageEvent.objects.filter(customer=customer, event_id__startswith="h-")
    assert commits.count() == 100
    assert Reservation.objects.filter(customer=customer, status="committed").count() == 100
    assert consumed <= 50
    assert period_used(customer, transfer) == Decimal("50") + consumed
    e = engine.entitlement_check(customer, transfer)
    assert e.reserved == 0 and e.usage == Decimal("50") + consumed


def test_twenty_concurrent_holds_with_one_reservation_id_hold_once():
    customer, transfer = customer_with("100")

    results = run_together(20, lambda i: engine.reservation_hold(customer, transfer, "same", "7"))

    assert all(r.allowed for r in results)
    assert Reservation.objects.filter(customer=customer).count() == 1
    assert engine.entitlement_check(customer, transfer).reserved == Decimal("7")


def test_a_commit_and_a_release_of_one_hold_racing_end_one_way_only():
    customer, transfer = customer_with("100")
    for n in range(20):
        engine.reservation_hold(customer, transfer, f"h-{n}", "2")

    def work(i: int) -> str:
        try:
            if i % 2:
                engine.reservation_commit(customer, transfer, f"h-{i // 2}")
            else:
                engine.reservation_release(customer, transfer, f"h-{i // 2}")
            return "ok"
        except Conflict as conflict:
            return conflict.code

    outcomes = run_together(40, work)

    statuses = list(Reservation.objects.filter(customer=customer).values_list("status", flat=True))
    committed = statuses.count("committed")
    assert committed + statuses.count("released") == 20
    assert outcomes.count("ok") == 20  # the loser of each pair is a 409
    assert period_used(customer, transfer) == Decimal(2 * committed)
    assert engine.entitlement_check(customer, transfer).reserved == 0
