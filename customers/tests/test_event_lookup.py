"""A recorded event found by its event_id (replays of consumes and reservation commits,
reversals: engine/ledger.py `event_recorded`) through the unique (customer, event_id) index,
even when the table's statistics take a customer that has since grown for a small one."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory, PlanFactory
from customers import engine
from customers.engine import sql
from customers.engine.ledger import event_recorded
from customers.models import UsageEvent
from customers.tests.factories import CustomerFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def _grown_customer():
    """A customer with 20,000 events recorded after the table's last ANALYZE, which saw it
    with none (and two other customers with a hundred each)."""
    feature = FeatureFactory(metered=True, key="calls")
    small, other, grown = CustomerFactory(), CustomerFactory(), CustomerFactory()
    now = timezone.now()

    def events(customer, count, prefix):
        return [
            UsageEvent(customer=customer, feature=feature, event_id=f"{prefix}-{n}", quantity=1,
                       timestamp=now - dt.timedelta(seconds=n), recorded_at=now)
            for n in range(count)
        ]  # fmt: skip

    UsageEvent.objects.bulk_create(events(small, 100, "s") + events(other, 100, "o"))
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {UsageEvent._meta.db_table}")
    UsageEvent.objects.bulk_create(events(grown, 20_000, "n"))
    return grown, feature


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner")
def _plan(queryset) -> str:
    with connection.cursor() as cursor:
        statement, params = queryset.query.sql_with_params()
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT TEXT) {statement}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner")
def test_the_lookup_by_event_id_uses_the_unique_index_whatever_the_statistics():
    # Given a customer that grew to 20,000 events since the last ANALYZE, so that the plain
    # lookup reads them all, one by one, from the (customer, feature, time) index
    grown, _ = _grown_customer()
    plain = UsageEvent.objects.filter(customer_id=grown.pk, event_id="n-0")
    assert "Rows Removed by Filter: 19999" in _plan(plain.order_by()[:1])
    # when its newest event is looked up by its event_id
    found = event_recorded(grown.pk, "n-0")
    lookup = UsageEvent.objects.filter(customer_id=sql.unplanned(grown.pk), event_id="n-0")
    plan = _plan(lookup.order_by()[:1])

    # then it is found through the unique index, reading no other event of the customer
    assert found is not None and found.event_id == "n-0"
    assert "usage_event_unique_per_customer" in plan, plan
    assert "Rows Removed by Filter" not in plan, plan


def test_a_replay_finds_its_event_among_many_of_the_customer():
    # Given a customer with 20,000 events and a consume recorded after them
    grown, feature = _grown_customer()
    plan = PlanFactory()
    PlanEntitlementFactory(plan=plan, feature=feature, limit=Decimal("1000000"))
    SubscriptionFactory(customer=grown, plan=plan)
    first = engine.entitlement_consume(grown, "calls", "2", "retry-me")
    # when the client sends it again
    again = engine.entitlement_consume(grown, "calls", "2", "retry-me")

    # then the second answer is the first's, counted once
    assert first.allowed and not first.replayed
    assert again.allowed and again.replayed
    assert UsageEvent.objects.filter(customer=grown, event_id="retry-me").count() == 1
    assert event_recorded(grown.pk, "no-such-event") is None
