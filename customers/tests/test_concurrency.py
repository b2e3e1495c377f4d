"""Consume under real concurrency, on PostgreSQL: threads released together by a barrier, each
on its own connection, against committed data (`transaction=True`). SQLite serialises writers,
so these are skipped there."""

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from customers import engine
from customers.engine.sql import postgresql
from customers.models import Grant, UsageCounter, UsageEvent
from customers.tests.factories import (
    CustomerFactory,
    FeatureFactory,
    GrantFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor == "sqlite", reason="SQLite serialises writers; run on PostgreSQL"
    ),
]

START = datetime(2025, 1, 31, 10, tzinfo=UTC)
AT = datetime(2025, 2, 10, tzinfo=UTC)


def run_together(count: int, work) -> list:
    """Runs work(i) for i in range(count) in `count` threads that start at the same moment;
    returns the results in order, re-raising the first error."""
    barrier = threading.Barrier(count, timeout=30)
    results: list = [None] * count
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 (reported to the test below)
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def customer_with(limit: str):
    plan = PlanFactory()
    transfer = FeatureFactory(metered=True, key=f"transfer-{plan.pk}")
    PlanEntitlementFactory(plan=plan, feature=transfer, limit=Decimal(limit))
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan, started_at=START)
    return customer, transfer


def period_counter(customer, feature) -> UsageCounter:
    return UsageCounter.objects.get(customer=customer, feature=feature, window="billing_period")


def test_fifty_concurrent_consumes_against_a_hard_balance_of_twenty_allow_exactly_twenty():
    customer, transfer = customer_with("20")

    results = run_together(
        50,
        lambda i: engine.entitlement_consume(
            customer, transfer.key, Decimal("1"), f"req-{i}", timestamp=AT
        ),
    )

    allowed = [r for r in results if r.allowed]
    denied = [r for r in results if not r.allowed]
    assert (len(allowed), len(denied)) == (20, 30)
    assert {r.reason for r in denied} == {"limit_exceeded"}
    assert UsageEvent.objects.filter(customer=customer).count() == 20
    assert period_counter(customer, transfer).used == 20
    assert engine.entitlement_check(customer, transfer.key, AT).usage == 20
    # Each allowed request saw a different usage: the gate serialised them.
    assert sorted(r.entitlement.usage for r in allowed) == list(range(1, 21))


def test_concurrent_consumes_burn_the_allowance_first_and_the_grant_second():
    customer, transfer = customer_with("10")
    grant = GrantFactory(
        customer=customer, feature=transfer, quantity=Decimal("10"), effective_at=START
    )

    results = run_together(
        50,
        lambda i: engine.entitlement_consume(
            customer, transfer.key, Decimal("1"), f"req-{i}", timestamp=AT
        ),
    )

    allowed = sorted((r.entitlement for r in results if r.allowed), key=lambda e: e.usage)
    assert len(allowed) == 20
    assert UsageEvent.objects.filter(customer=customer).count() == 20
    grant.refresh_from_db()
    counter = period_counter(customer, transfer)
    assert (grant.consumed, counter.used, counter.drawn) == (10, 20, 10)
    # The first ten left the grant whole; each of the next ten took one unit of it.
    assert [e.granted for e in allowed] == [10] * 10 + list(range(9, -1, -1))


def test_twenty_concurrent_duplicates_of_one_event_id_count_once():
    customer, transfer = customer_with("1")  # a balance of one: a second count would be denied

    results = run_together(
        20,
        lambda i: engine.entitlement_consume(
            customer, transfer.key, Decimal("1"), "the-same-request", timestamp=AT
        ),
    )

    assert all(r.allowed for r in results)
    assert sum(not r.replayed for r in results) == 1
    assert UsageEvent.objects.filter(customer=customer).count() == 1
    assert period_counter(customer, transfer).used == 1


def test_concurrent_batches_with_overlapping_event_ids_count_each_event_once():
    customer, transfer = customer_with("1000")
    event_ids = [f"evt-{n:03}" for n in range(60)]

    def batch(i: int):
        # Each thread sends an overlapping, differently ordered slice of the same events.
        mine = event_ids[i * 5 : i * 5 + 20]
        random.Random(i).shuffle(mine)
        return engine.usage_record_batch(
            [
                {
                    "event_id": event_id,
                    "customer": customer.external_id,
                    "feature": transfer.key,
                    "quantity": "2",
                    "timestamp": (AT + timedelta(minutes=int(event_id[4:]))).isoformat(),
                }
                for event_id in mine
            ]
        )

    results = run_together(9, batch)

    assert sum(r.accepted for r in results) == 60
    assert sum(r.duplicates for r in results) == 9 * 20 - 60
    assert not any(r.rejected for r in results)
    assert UsageEvent.objects.filter(customer=customer).count() == 60
    assert period_counter(customer, transfer).used == 120


def test_concurrent_consumes_and_batches_sharing_event_ids_count_each_once():
    customer, transfer = customer_with("1000")

    def work(i: int):
        event_id = f"shared-{i % 10}"
        if i % 2:
            return engine.entitlement_consume(
                customer, transfer.key, Decimal("3"), event_id, timestamp=AT
            )
        return engine.usage_record_batch(
            [
                {
                    "event_id": event_id,
                    "customer": customer.external_id,
                    "feature": transfer.key,
                    "quantity": "3",
                    "timestamp": AT.isoformat(),
                }
            ]
        )

    run_together(40, work)

    assert UsageEvent.objects.filter(customer=customer).count() == 10
    assert period_counter(customer, transfer).used == 30
    assert Grant.objects.count() == 0


def test_a_batch_and_a_consume_deadlocked_on_one_event_id_both_complete(monkeypatch):
    """The batch has inserted the event and waits for the counters that the consume holds,
    while the consume waits on the batch's insert: PostgreSQL aborts one, which runs again and
    finds the other's event recorded."""
    customer, transfer = customer_with("1000")
    inserted, take_turns = threading.Event(), postgresql.take_turns

    def lock_after_the_consume(customer_ids):  # what the batch does before locking counters
        if threading.current_thread().name == "batch":
            inserted.set()
            threading.Event().wait(0.5)  # the consume locks its counters, then waits on us
        return take_turns(customer_ids)

    monkeypatch.setattr(postgresql, "take_turns", lock_after_the_consume)
    outcomes, errors = {}, []

    def batch():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET deadlock_timeout = '100ms'")
            outcomes["batch"] = engine.usage_record_batch(
                [{"event_id": "both", "customer": customer.external_id,
                  "feature": transfer.key, "quantity": "3", "timestamp": AT.isoformat()}]
            )  # fmt: skip
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)
        finally:
            connection.close()

    def consume():
        try:
            assert inserted.wait(10), "the batch never reached its counters"
            outcomes["consume"] = engine.entitlement_consume(
                customer, transfer.key, Decimal("3"), "both", timestamp=AT
            )
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=batch, name="batch"), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors, errors
    assert outcomes["consume"].allowed
    batch_result = outcomes["batch"]
    assert (batch_result.accepted, batch_result.duplicates) in ((1, 0), (0, 1))
    assert outcomes["consume"].replayed == (batch_result.accepted == 1)
    assert UsageEvent.objects.filter(customer=customer).count() == 1
    assert period_counter(customer, transfer).used == 3


def test_a_batch_waits_its_turn_before_locking_counters():
    """Batches take turns per bucket of customers (an advisory lock) before their locking
    statement, so that it starts after the other batch's commit."""
    customer, transfer = customer_with("1000")
    bucket = customer.pk % postgresql.turns()
    done = threading.Event()

    def batch():
        try:
            engine.usage_record_batch(
                [{"event_id": "turn", "customer": customer.external_id,
                  "feature": transfer.key, "quantity": "3", "timestamp": AT.isoformat()}]
            )  # fmt: skip
            done.set()
        finally:
            connection.close()

    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [postgresql.TURNS_CLASS, bucket])
        thread = threading.Thread(target=batch)
        thread.start()
        assert not done.wait(0.5)  # its events are in, its counters wait for the turn
        cursor.execute("COMMIT")
    thread.join(timeout=30)

    assert done.is_set()
    assert period_counter(customer, transfer).used == 3


def test_concurrent_consumes_in_one_statement_are_exact(monkeypatch):
    """Given a warm state (so that each consume tries the one-statement path) and a hard
    limit of 25 with 0.5 used, when 60 threads consume 0.5 at once, then exactly 49 are
    allowed, each saw a different usage, the counter equals the ledger, and most of them
    went through the one statement (the thresholds and the denials take the other paths)."""
    customer, transfer = customer_with("25")
    engine.entitlement_consume(customer, transfer.key, Decimal("0.5"), "warm", timestamp=AT)
    one_trip = postgresql.consume_one_trip
    went = []

    def counting(cursor, params, events):
        each = one_trip(cursor, params, events)
        went.extend(rows[0][9] for rows in each)
        return each

    monkeypatch.setattr(postgresql, "consume_one_trip", counting)
    results = run_together(
        60,
        lambda i: engine.entitlement_consume(
            customer, transfer.key, Decimal("0.5"), f"one-{i}", timestamp=AT
        ),
    )

    allowed = [r for r in results if r.allowed]
    assert (len(allowed), len(results) - len(allowed)) == (49, 11)
    assert UsageEvent.objects.filter(customer=customer).count() == 50
    assert period_counter(customer, transfer).used == 25
    assert sorted(r.entitlement.usage for r in allowed) == [
        Decimal("0.5") * n for n in range(2, 51)
    ]
    assert went.count(True) >= 30, went


def test_a_grant_committed_while_a_consume_waits_for_the_counters_is_drawn():
    """Given a hard limit of 10 with 9 used and a warm state, when a transaction holds the
    counter, adds a grant of 5 and commits while a consume of 3 waits for that counter, then
    the consume sees the grant (its checks run after the lock, not on the snapshot from
    before the wait): allowed, 1 from the allowance and 2 from the grant."""
    customer, transfer = customer_with("10")
    engine.entitlement_consume(customer, transfer.key, Decimal("9"), "warm", timestamp=AT)
    locked, outcome = threading.Event(), {}

    def granting() -> None:
        from django.db import transaction

        try:
            with transaction.atomic():
                UsageCounter.objects.select_for_update().get(
                    customer=customer, feature=transfer, window="billing_period"
                )
                locked.set()
                GrantFactory(customer=customer, feature=transfer, quantity=Decimal("5"),
                             effective_at=START)  # fmt: skip
                time.sleep(0.5)  # the consume is waiting on the counter by now
        finally:
            connection.close()

    def consuming() -> None:
        try:
            locked.wait(10)
            outcome["result"] = engine.entitlement_consume(
                customer, transfer.key, Decimal("3"), "waited", timestamp=AT
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=granting), threading.Thread(target=consuming)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert outcome["result"].allowed
    assert Grant.objects.get(customer=customer).consumed == Decimal("2")
    assert period_counter(customer, transfer).used == 12
