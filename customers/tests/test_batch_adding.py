"""The batch's adding path on PostgreSQL: sums without grants are added to their counters by the
statement that locks them, the rest by the engine's arithmetic. Both must come to what the
ledger says, with the same thresholds recorded and the same burn-down of grants."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from customers import engine
from customers.engine.sql import postgresql
from customers.models import Grant, Notification, UsageCounter, UsageEvent
from customers.tests.factories import (
    CustomerFactory,
    EntitlementOverrideFactory,
    FeatureFactory,
    GrantFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
)
from customers.usage import counted_windows_ensure

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the adding path is PostgreSQL's"),
]

START = datetime(2025, 1, 31, 10, tzinfo=UTC)
AT = datetime(2025, 2, 10, tzinfo=UTC)


@pytest.fixture
def transfer():
    """Counted in every window kind, as if plans and overrides used them all."""
    plan = PlanFactory()
    feature = FeatureFactory(metered=True, key="transfer")
    PlanEntitlementFactory(plan=plan, feature=feature, limit=Decimal("100"))
    counted_windows_ensure(feature=feature, kinds=engine.WINDOW_KINDS)
    return plan, feature


def subscribed(plan):
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan, started_at=START)
    return customer


def event(customer, quantity, event_id, minutes=0):
    return {
        "event_id": event_id,
        "customer": customer.external_id,
        "feature": "transfer",
        "quantity": str(quantity),
        "timestamp": (AT + timedelta(minutes=minutes)).isoformat(),
    }


def used(customer, feature) -> dict[str, Decimal]:
    return {
        c.window: c.used
        for c in UsageCounter.objects.filter(customer=customer, feature=feature, start__lte=AT)
    }


def test_events_added_by_the_locking_statement_count_in_every_window(transfer):
    plan, feature = transfer
    customers = [subscribed(plan) for _ in range(3)]

    first = engine.usage_record_batch([event(c, 7, f"a-{c.pk}") for c in customers])
    again = engine.usage_record_batch(
        [event(c, 5, f"b-{c.pk}", minutes=1) for c in customers] + [event(customers[0], 7, "x")]
    )

    assert (first.accepted, again.accepted) == (3, 4)
    assert used(customers[0], feature) == dict.fromkeys(engine.WINDOW_KINDS, Decimal("19"))
    assert used(customers[2], feature) == dict.fromkeys(engine.WINDOW_KINDS, Decimal("12"))
    assert engine.entitlement_check(customers[0], "transfer", AT).balance == Decimal("81")


def test_each_threshold_crossed_within_one_batch_is_recorded(transfer):
    plan, _ = transfer
    customer = subscribed(plan)

    # 50, then 85 (80% crossed), then 100 (100% crossed), then 120: in one batch
    result = engine.usage_record_batch(
        [event(customer, q, f"t-{n}", minutes=n) for n, q in enumerate([50, 35, 15, 20])]
    )

    assert result.accepted == 4
    assert sorted(Notification.objects.values_list("threshold", flat=True)) == [80, 100]
    assert engine.entitlement_check(customer, "transfer", AT + timedelta(hours=1)).overage == 20


def test_a_batch_adds_for_some_customers_and_burns_grants_down_for_others(transfer):
    plan, feature = transfer
    plain, topped_up = subscribed(plan), subscribed(plan)
    grant = GrantFactory(
        customer=topped_up, feature=feature, quantity=Decimal("30"), effective_at=START
    )

    engine.usage_record_batch([event(plain, 90, "p1"), event(topped_up, 90, "g1")])
    engine.usage_record_batch([event(plain, 20, "p2", 1), event(topped_up, 20, "g2", 1)])

    grant.refresh_from_db()
    assert grant.consumed == Decimal("10")  # 110 used: 100 of allowance, then 10 of the grant
    counter = UsageCounter.objects.get(customer=topped_up, window="billing_period")
    assert (counter.used, counter.drawn) == (Decimal("110"), Decimal("10"))
    assert used(plain, feature)["billing_period"] == Decimal("110")
    assert UsageCounter.objects.get(customer=plain, window="billing_period").drawn == 0


def test_a_grant_that_appears_after_the_look_makes_the_batch_run_again(transfer, monkeypatch):
    plan, feature = transfer
    customer = subscribed(plan)
    engine.usage_record_batch([event(customer, 95, "before")])
    grant = GrantFactory(
        customer=customer, feature=feature, quantity=Decimal("20"), effective_at=START
    )
    looks = []

    def blind(*args):  # as if the grant had committed just after the batch looked
        looks.append(args)
        return set()

    monkeypatch.setattr(postgresql, "granted", blind)
    result = engine.usage_record_batch([event(customer, 15, "after", 1)])

    assert result.accepted == 1 and len(looks) == 1  # the second run does not add
    grant.refresh_from_db()
    assert grant.consumed == Decimal("10")
    assert UsageEvent.objects.filter(customer=customer).count() == 2
    assert used(customer, feature) == dict.fromkeys(engine.WINDOW_KINDS, Decimal("110"))
    assert Grant.objects.get(pk=grant.pk).consumed == Decimal("10")


def test_any_text_in_event_ids_is_recorded_exactly_and_replays_as_a_duplicate(transfer):
    plan, _ = transfer
    customer = subscribed(plan)
    ids = ['a"b', "c\\d", "e,f", "{g}", " h ", "NULL", "ünï", 'x\\"y', "\\"]

    first = engine.usage_record_batch([event(customer, 1, i, n) for n, i in enumerate(ids)])
    again = engine.usage_record_batch([event(customer, 1, i, n) for n, i in enumerate(ids)])

    assert (first.accepted, again.accepted, again.duplicates) == (len(ids), 0, len(ids))
    recorded = set(UsageEvent.objects.filter(customer=customer).values_list("event_id", flat=True))
    assert recorded == set(ids)


def test_batches_take_no_turns_when_turned_off(transfer, settings, monkeypatch):
    plan, feature = transfer
    customer = subscribed(plan)
    settings.USAGE_BATCH_TURNS = 0
    monkeypatch.setattr(postgresql, "take_turns", lambda ids: pytest.fail("took a turn"))

    assert engine.usage_record_batch([event(customer, 4, "off")]).accepted == 1
    assert used(customer, feature)["billing_period"] == Decimal("4")


def test_events_whose_window_kind_changes_within_a_batch_count_in_every_window(transfer):
    """An override resetting daily starts between two events of one batch: the first counts
    per billing period, the second per day, and every counter still gets both."""
    plan, feature = transfer
    customer = subscribed(plan)
    EntitlementOverrideFactory(
        customer=customer,
        feature=feature,
        reset="day",
        limit=Decimal("15"),
        starts_at=AT + timedelta(minutes=30),
    )

    result = engine.usage_record_batch([event(customer, 7, "e1", 0), event(customer, 5, "e2", 60)])

    assert result.accepted == 2
    assert used(customer, feature) == dict.fromkeys(engine.WINDOW_KINDS, Decimal("12"))
    # 12 of the override's 15 a day: the second event crossed 80% of the day's allowance
    assert list(Notification.objects.values_list("threshold", flat=True)) == [80]
    check = engine.entitlement_check(customer, "transfer", AT + timedelta(minutes=90))
    assert (check.usage, check.balance) == (Decimal("12"), Decimal("3"))


def test_a_counter_the_batch_creates_next_to_quiet_ones_is_counted_with_them(transfer):
    """One event in a window whose counters exist and stay quiet (nothing past the allowance, no
    threshold), one in next month's window, whose counters do not exist yet and which crosses
    80%: the quiet counters are read back as they were before the batch added to them, and
    each event is counted once in its own windows."""
    plan, feature = transfer
    customer = subscribed(plan)
    engine.usage_record_batch([event(customer, 10, "first")])
    next_month = 60 * 24 * 30

    result = engine.usage_record_batch(
        [event(customer, 5, "same-window", 1), event(customer, 90, "next", next_month)]
    )

    assert result.accepted == 2
    counters = UsageCounter.objects.filter(customer=customer, feature=feature)
    now = {c.window: c.used for c in counters if c.start <= AT < c.end}
    later = {c.window: c.used for c in counters if c.start > AT}
    assert now == {**dict.fromkeys(engine.WINDOW_KINDS, Decimal("15")), "never": Decimal("105")}
    assert later == dict.fromkeys(["billing_period", "day", "week", "month"], Decimal("90"))
    assert list(Notification.objects.values_list("threshold", flat=True)) == [80]


def test_thresholds_beyond_the_bounds_a_row_carries_are_each_recorded():
    """Four thresholds: more gaps than the locking statement checks per counter, so the
    feature is never quiet and each event's arithmetic runs; every threshold crossed is
    recorded once."""
    plan = PlanFactory()
    feature = FeatureFactory(metered=True, key="transfer")
    PlanEntitlementFactory(
        plan=plan, feature=feature, limit=Decimal("100"), notify_at=[25, 50, 75, 100]
    )
    customer = subscribed(plan)

    result = engine.usage_record_batch(
        [event(customer, q, f"n-{n}", minutes=n) for n, q in enumerate([10, 20, 30])]
    )

    assert result.accepted == 3
    assert sorted(Notification.objects.values_list("threshold", flat=True)) == [25, 50]
    assert used(customer, feature)["billing_period"] == Decimal("60")
