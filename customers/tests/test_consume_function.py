"""The one-trip consume's PostgreSQL function (engine/sql/postgresql.py, CONSUME_FUNCTION).

A PL/pgSQL function keeps its statements' plans for the connection's life, and after a few
calls they are generic: planned for any parameters. Every lookup in them must then lead with
the customer (or a row's id), whatever the data: a generic plan that read a feature's rows
through an index on the feature alone made each consume read every customer's counter of
that feature (about 0.4 ms a consume with 1,000 customers, growing with their number)."""

import re
import threading
import time
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from customers import engine
from customers.engine.sql import postgresql
from customers.models import (
    Customer,
    Grant,
    GrantSource,
    Reservation,
    UsageCounter,
    UsageEvent,
)
from customers.tests.factories import (
    CustomerFactory,
    FeatureFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's function"),
]

TABLES = {
    postgresql.COUNTER,
    postgresql.EVENT,
    postgresql.GRANT,
    postgresql.RESERVATION,
    postgresql.CUSTOMER,
}


@pytest.fixture
def many_customers():
    """1,500 customers with counters of one feature (a catalog with one metered feature, as
    the benchmark's), most with grants, reservations and events of it: enough rows, analyzed,
    for the planner to choose as in production."""
    now = timezone.now()
    features = [FeatureFactory(metered=True) for _ in range(2)]
    # Statistics as a bulk load leaves them without autovacuum: taken while the tables were
    # nearly empty (the benchmark's, which showed the plan in question)
    with connection.cursor() as cursor:
        for table in sorted(TABLES):
            cursor.execute(f"ANALYZE {table}")
    customers = Customer.objects.bulk_create(
        Customer(external_id=f"many-{i}", name=f"Many {i}", email=f"m{i}@x.test", currency="USD")
        for i in range(1500)
    )
    UsageCounter.objects.bulk_create(
        UsageCounter(customer=c, feature=f, window="billing_period", start=now - timedelta(days=3),
                     end=now + timedelta(days=27))
        for c in customers for f in features[:1]
    )  # fmt: skip
    Grant.objects.bulk_create(
        Grant(customer=c, feature=features[0], quantity=Decimal("5"), source=GrantSource.MANUAL,
              reason="many", effective_at=now - timedelta(days=1))
        for c in customers[:1200]
    )  # fmt: skip
    Reservation.objects.bulk_create(
        Reservation(customer=c, feature=features[0], reservation_id=f"r-{c.pk}", quantity=1,
                    status="held", ttl_seconds=3600, expires_at=now + timedelta(hours=1),
                    created_at=now)
        for c in customers[:1000]
    )  # fmt: skip
    UsageEvent.objects.bulk_create(
        UsageEvent(customer=c, feature=features[0], event_id=f"e-{c.pk}-{n}", quantity=1,
                   timestamp=now, recorded_at=now)
        for c in customers for n in range(3)
    )  # fmt: skip
    return features


@pytest.fixture
def went(monkeypatch) -> list[bool]:
    """Whether each one-trip call went ahead (the flag of its first row), in order."""
    one_trip, went = postgresql.consume_one_trip, []

    def counting(cursor, params, events):
        each = one_trip(cursor, params, events)
        went.extend(rows[0][9] for rows in each)
        return each

    monkeypatch.setattr(postgresql, "consume_one_trip", counting)
    return went


def _generic_plan(body: str) -> str:
    """EXPLAIN of the function's statement as PostgreSQL plans it for any parameters."""
    # Its arguments and the variables each event's values are taken into
    variables = [(name, kind) for name, kind, _ in postgresql.CONSUME_EVENT_VARIABLES]
    parameters = [*postgresql.CONSUME_FUNCTION_ARGS, *variables]
    for number, (name, _) in enumerate(parameters, start=1):
        body = re.sub(rf"\b{name}\b", f"${number}", body)
    body = re.sub(r"\bl_locked\b", "1", body)  # the function's variable
    kinds = ", ".join(kind for _, kind in parameters)
    nulls = ", ".join("NULL" for _ in parameters)
    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        try:
            cursor.execute(f"PREPARE consume_plan ({kinds}) AS {body}")
            cursor.execute(f"EXPLAIN EXECUTE consume_plan ({nulls})")
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("DEALLOCATE ALL")
            cursor.execute("RESET plan_cache_mode")


def _first_columns() -> dict[str, str]:
    """Each index of the tables read, by name: its first column."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.relname, a.attname FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] "
            "WHERE t.relname = ANY(%s)",
            [sorted(TABLES)],
        )
        return dict(cursor.fetchall())


@pytest.mark.parametrize("body", ["CONSUME_LOCK_BODY", "CONSUME_CHECK_AND_WRITE_BODY"])
def test_every_lookup_of_the_generic_plans_leads_with_the_customer(many_customers, body):
    plan = _generic_plan(getattr(postgresql, body))
    first_columns = _first_columns()
    scans = re.findall(r"(Seq Scan|Index Scan|Index Only Scan|Bitmap Index Scan)"
                       r"(?: using (\S+))? on (\S+)", plan)  # fmt: skip
    assert scans, plan
    for kind, index, table in scans:
        if kind == "Bitmap Index Scan":
            index = table  # "Bitmap Index Scan on <index>"
        assert kind != "Seq Scan" or table not in TABLES, plan
        if index:
            assert first_columns.get(index, "customer_id") in ("customer_id", "id"), plan


def _consuming(limit: str) -> tuple:
    """A customer of a plan with a hard limit of `limit` on the metered feature `calls`, who
    has consumed 1 of it (so its counter exists); and the feature."""
    plan = PlanFactory()
    feature = FeatureFactory(metered=True, key="calls")
    PlanEntitlementFactory(plan=plan, feature=feature, limit=Decimal(limit))
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan)
    engine.entitlement_consume(customer.external_id, "calls", "1", "first")
    return customer, feature


def test_a_consume_creates_the_function_when_the_database_has_none():
    customer, feature = _consuming("10")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP FUNCTION {postgresql.CONSUME_FUNCTION_NAME}")

    result = engine.entitlement_consume(customer.external_id, "calls", "2", "second")

    assert result.allowed and result.entitlement.usage == 3
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_proc WHERE proname = %s",
                       [postgresql.CONSUME_FUNCTION_NAME])  # fmt: skip
        assert cursor.fetchone()[0] == 1


def test_a_customer_this_process_has_not_cached_takes_the_one_trip(went):
    customer, feature = _consuming("10")
    engine.caches_clear()  # as a worker that has never seen this customer
    went.clear()
    result = engine.entitlement_consume(customer.external_id, "calls", "2", "second")

    assert result.allowed and result.entitlement.usage == 3
    assert went == [True]


def _seq_scans(table: str) -> int:
    """Sequential scans of `table` so far, this connection's included (flushed first)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # at this statement's end
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = %s", [table])
        return cursor.fetchone()[0]


def test_plans_made_on_a_nearly_empty_table_still_use_its_indexes_once_it_has_grown():
    if connection.pg_version < 150000:
        pytest.skip("pg_stat_force_next_flush: PostgreSQL 15 and later")
    # A new installation: one customer's counter, its statistics taken then
    customer, feature = _consuming("100000")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {postgresql.COUNTER}")
    # This connection's plans are made and kept while the table is one page
    for n in range(8):
        engine.entitlement_consume(customer.external_id, "calls", "1", f"early-{n}")
    # then thousands of customers start using it, and nothing analyzes it again (no autovacuum)
    now = timezone.now()
    others = Customer.objects.bulk_create(
        Customer(external_id=f"late-{i}", name=f"Late {i}", email=f"l{i}@x.test", currency="USD")
        for i in range(3000)
    )
    UsageCounter.objects.bulk_create(
        UsageCounter(customer=c, feature=feature, window="billing_period",
                     start=now - timedelta(days=3), end=now + timedelta(days=27))
        for c in others
    )  # fmt: skip
    scans = _seq_scans(postgresql.COUNTER)

    for n in range(5):
        result = engine.entitlement_consume(customer.external_id, "calls", "1", f"late-{n}")
        assert result.allowed

    # Each consume still reaches its counter through an index, not by reading all 3,001
    assert _seq_scans(postgresql.COUNTER) == scans
    assert result.entitlement.usage == 14


def test_units_held_by_reservations_are_set_aside_in_the_one_trip(went):
    # Given a hard limit of 10, 1 used and 6 held by a reservation
    customer, feature = _consuming("10")
    assert engine.reservation_hold(customer.external_id, "calls", "r-1", "6").allowed
    went.clear()

    # When 2 more are consumed, the one trip records them beside the hold
    result = engine.entitlement_consume(customer.external_id, "calls", "2", "second")
    assert result.allowed and went == [True]
    e = result.entitlement
    assert (e.usage, e.reserved, e.holds, e.balance) == (Decimal("3"), Decimal("6"), 1, 1)

    # and 2 more than the balance the hold leaves are denied, nothing recorded
    result = engine.entitlement_consume(customer.external_id, "calls", "2", "third")
    assert not result.allowed and result.reason == "limit_exceeded"
    assert (result.entitlement.usage, result.entitlement.reserved) == (Decimal("3"), Decimal("6"))
    assert not UsageEvent.objects.filter(customer=customer, event_id="third").exists()
    assert went == [True, False]

    # Once the hold is released, the units are there to consume again, on the one trip
    engine.reservation_release(customer.external_id, "calls", "r-1")
    result = engine.entitlement_consume(customer.external_id, "calls", "2", "fourth")
    assert result.allowed and result.entitlement.usage == Decimal("5")
    assert result.entitlement.reserved == 0 and went == [True, False, True]


def test_an_earlier_version_of_the_function_is_replaced():
    """A database migrated by an earlier release holds the function with other arguments:
    `migrate` (functions_create) drops it, leaving the current one alone."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE FUNCTION {postgresql.CONSUME_FUNCTION_NAME}(p_customer bigint) "
            "RETURNS integer LANGUAGE sql AS 'SELECT 1'"
        )
    postgresql.functions_create()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_function_identity_arguments(oid) FROM pg_proc WHERE proname = %s",
            [postgresql.CONSUME_FUNCTION_NAME],
        )
        (arguments,) = cursor.fetchall()
    assert arguments[0].endswith("p_held_counts boolean")


def _wait_for(what: str, query_like: str) -> None:
    """Until another backend running `query_like` waits on `what` (a wait_event_type, or
    PgSleep)."""
    for _ in range(400):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND query LIKE %s AND %s IN (wait_event_type, wait_event)",
                [f"%{query_like}%", what],
            )
            if cursor.fetchone():
                return
        time.sleep(0.025)
    raise AssertionError(f"no backend waited on {what}")


def test_a_counter_its_first_statement_did_not_lock_is_not_decided_on(went):
    """A counter created after the first statement ran, then locked by another writer just
    before the second statement's lock: that statement reads the counter as the writer left
    it, and the units held as before it. The function must not go ahead on that (it did, and
    let a consume through that the writer's hold left no room for)."""
    # Given a hard limit of 10 and no counter yet
    plan = PlanFactory()
    feature = FeatureFactory(metered=True, key="calls")
    PlanEntitlementFactory(plan=plan, feature=feature, limit=Decimal("10"))
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan)
    # and the function pausing between its two statements (its own statements, as they are)
    paused = postgresql.CONSUME_FUNCTION.replace(
        "    RETURN QUERY", "    PERFORM pg_sleep(0.5);\n    RETURN QUERY", 1
    )
    assert paused != postgresql.CONSUME_FUNCTION
    with connection.cursor() as cursor:
        cursor.execute(paused)
    answers = []

    def consume():
        try:
            answers.append(engine.entitlement_consume(customer.external_id, "calls", "4", "c-1"))
        finally:
            connection.close()

    params = connection.get_connection_params()
    other = psycopg.connect(
        **{k: params[k] for k in ("dbname", "user", "host", "port", "password") if k in params}
    )
    try:
        # When a consume of 4 has run the first statement (nothing to lock) and pauses,
        consumer = threading.Thread(target=consume)
        consumer.start()
        _wait_for("PgSleep", postgresql.CONSUME_FUNCTION_NAME)
        # a hold of 1 creates the counter (committed),
        assert engine.reservation_hold(customer.external_id, "calls", "h-1", "1").allowed
        # another writer locks it and holds 6 more, committing once the consume waits for it
        now = timezone.now()
        with other.cursor() as cursor:
            cursor.execute(
                f"SELECT id FROM {postgresql.COUNTER} WHERE customer_id = %s FOR UPDATE",
                [customer.pk],
            )
            cursor.execute(
                f"INSERT INTO {postgresql.RESERVATION} (customer_id, feature_id, "
                "reservation_id, quantity, status, ttl_seconds, expires_at, created_at) "
                "VALUES (%s, %s, 'h-2', 6, 'held', 600, %s, %s)",
                [customer.pk, feature.pk, now + timedelta(minutes=10), now],
            )
        _wait_for("Lock", postgresql.CONSUME_FUNCTION_NAME)
        other.commit()
        consumer.join(timeout=30)
    finally:
        other.close()
        postgresql.functions_create()

    # Then the one trip did not go ahead, and the consume was denied: 7 held leave 3
    assert went[0] is False
    (answer,) = answers
    assert not answer.allowed and answer.reason == "limit_exceeded"
    assert not UsageEvent.objects.filter(customer=customer).exists()
    e = engine.entitlement_check(customer.external_id, "calls")
    assert (e.usage, e.reserved, e.balance) == (0, 7, 3)
