"""The hot path is measured, not guessed: a check, a resolve and a consume cost the same small,
fixed number of queries with 10 usage events or 100,000 (counters, never a scan of events).

The numbers include the savepoints of the engine's `transaction.atomic` blocks, which run as
savepoints inside the test's transaction (in production the outer block is a transaction)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from customers import engine
from customers.models import UsageCounter, UsageEvent
from customers.tests.factories import (
    CustomerFactory,
    EntitlementOverrideFactory,
    FeatureFactory,
    GrantFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
)
from customers.usage import usage_counters_rebuild

pytestmark = pytest.mark.django_db

START = datetime(2025, 1, 31, 10, tzinfo=UTC)
AT = datetime(2025, 2, 27, 12, tzinfo=UTC)

# The customer's state (subscription, plan terms, overrides) is cached per process and checked
# against its version in the same query as usage; a first check loads it (three queries).
COLD_CHECK_QUERIES = 4
# one query: versions, the counters of the windows in force, the grants in force
CHECK_QUERIES = 1
# the same query for every feature
RESOLVE_QUERIES = 1
# savepoint, counters locked with the versions, grants locked, the units reservations hold
# (summed after the locks), event insert (ON CONFLICT DO NOTHING RETURNING), counters update,
# release (one more, the grants update, when the usage
# draws on a grant; two more the first time a window is used: its counters created, locked again)
CONSUME_QUERIES = 7


@pytest.fixture
def customer():
    plan = PlanFactory()
    transfer = FeatureFactory(metered=True, key="data-transfer")
    storage = FeatureFactory(latest=True, key="storage")
    PlanEntitlementFactory(plan=plan, feature=transfer, limit=Decimal("1000000"))
    PlanEntitlementFactory(plan=plan, feature=storage, limit=Decimal("100"))
    PlanEntitlementFactory(plan=plan, feature=FeatureFactory(), enabled=True)
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan, started_at=START)
    EntitlementOverrideFactory(customer=customer, feature=storage, limit=Decimal("2000"))
    GrantFactory(customer=customer, feature=transfer, quantity=Decimal("10"), effective_at=START)
    return customer


def record_events(customer, count: int) -> None:
    """`count` events of 1 GB spread over the first 27 days of the billing period, inserted by
    the database itself (a recursive CTE per day: 100,000 ORM objects would take seconds),
    then the counters rebuilt from them as `rebuild_usage_counters` does."""
    transfer = engine.feature_by_key("data-transfer")
    fields = {f.name: f for f in UsageEvent._meta.fields}
    quote = connection.ops.quote_name
    columns = ["customer", "feature", "event_id", "quantity", "timestamp", "properties"]
    days = 27
    with connection.cursor() as cursor:
        for day in range(days):
            first, last = count * day // days, count * (day + 1) // days
            if first == last:
                continue
            cursor.execute(
                f"INSERT INTO {quote(UsageEvent._meta.db_table)} "
                f"({', '.join(quote(fields[c].column) for c in [*columns, 'recorded_at'])}) "
                "WITH RECURSIVE n(i) AS (SELECT %s UNION ALL SELECT i + 1 FROM n WHERE i < %s) "
                "SELECT %s, %s, 'bulk-' || i, %s, %s, %s, %s FROM n",
                [
                    first,
                    last - 1,
                    customer.pk,
                    transfer.pk,
                    fields["quantity"].get_db_prep_save(Decimal("1"), connection),
                    fields["timestamp"].get_db_prep_save(
                        START + timedelta(days=day, hours=1), connection
                    ),
                    fields["properties"].get_db_prep_save({}, connection),
                    fields["recorded_at"].get_db_prep_save(START, connection),
                ],
            )
    usage_counters_rebuild(customers=[customer])


@pytest.mark.parametrize("events", [10, 100_000])
def test_check_resolve_and_consume_cost_the_same_queries_whatever_the_events(
    customer, events, django_assert_num_queries
):
    record_events(customer, events)
    assert UsageEvent.objects.count() == events
    assert UsageCounter.objects.filter(window="billing_period").get().used == events

    engine.caches_clear()
    engine.feature_by_key("data-transfer")
    with django_assert_num_queries(COLD_CHECK_QUERIES):
        engine.entitlement_check(customer, "data-transfer", at=AT)
    with django_assert_num_queries(CHECK_QUERIES):
        checked = engine.entitlement_check(customer, "data-transfer", at=AT)
    with django_assert_num_queries(RESOLVE_QUERIES):
        resolved = engine.entitlements_resolve(customer, at=AT)
    # Only the billing period is counted (no day counter to create as the day begins).
    with django_assert_num_queries(CONSUME_QUERIES):
        engine.entitlement_consume(customer, "data-transfer", Decimal("1"), "first", timestamp=AT)
    with django_assert_num_queries(CONSUME_QUERIES):
        consumed = engine.entitlement_consume(
            customer, "data-transfer", Decimal("1"), "one-more", timestamp=AT
        )

    assert (checked.usage, checked.balance) == (events, 1000000 - events + 10)
    assert len(resolved) == 3
    assert consumed.allowed
    assert consumed.entitlement.usage == events + 2
