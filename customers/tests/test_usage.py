"""`rebuild_usage_counters`: counters recomputed from the event ledger, drift reported and
fixed, nothing changed by a dry run."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from catalog.models import Reset
from customers import engine
from customers.models import SubscriptionStatus, UsageCounter, UsageEvent
from customers.tests.factories import (
    CustomerFactory,
    FeatureFactory,
    GrantFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
    UsageEventFactory,
)
from customers.usage import counted_windows_ensure, usage_counters_rebuild

pytestmark = pytest.mark.django_db

D = Decimal
START = datetime(2025, 1, 31, 10, tzinfo=UTC)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def counters() -> dict[tuple, tuple]:
    return {
        (c.customer_id, c.feature_id, c.window, c.start): (c.used, c.drawn, c.level, c.level_at)
        for c in UsageCounter.objects.all()
    }


def report(customer, feature, quantity, at, event_id):
    result = engine.usage_record_batch(
        [
            {
                "event_id": event_id,
                "customer": customer.external_id,
                "feature": feature.key,
                "quantity": str(quantity),
                "timestamp": at.isoformat(),
            }
        ]
    )
    assert result.accepted == 1


@pytest.fixture
def plan():
    return PlanFactory()


@pytest.fixture
def transfer(plan):
    """Counted in every window kind, as if plans and overrides used them all."""
    feature = FeatureFactory(metered=True, name="Data transfer")
    PlanEntitlementFactory(plan=plan, feature=feature, limit=D("50"))
    counted_windows_ensure(feature=feature, kinds=engine.WINDOW_KINDS)
    return feature


@pytest.fixture
def storage(plan):
    feature = FeatureFactory(latest=True, name="Storage")
    PlanEntitlementFactory(plan=plan, feature=feature, limit=D("100"), reset=Reset.MONTH)
    return feature


@pytest.fixture
def customer(plan):
    customer = CustomerFactory(external_id="acme")
    SubscriptionFactory(customer=customer, plan=plan, started_at=START)
    return customer


def test_counters_kept_by_the_engine_show_no_drift(plan, transfer, storage, customer):
    """Consumes, batches, both aggregations, out-of-order levels, a grant, an off-grid stored
    period, usage before any subscription and a cancel followed by a new subscription."""
    GrantFactory(customer=customer, feature=transfer, quantity=D("30"), effective_at=START)
    for day in range(45):
        at = START + timedelta(days=day, hours=day % 24)
        engine.entitlement_consume(customer, transfer, D("1.5"), f"t-{day}", timestamp=at)
        report(customer, storage, 10 + day, at, f"s-{day}")
    report(customer, storage, 5, START + timedelta(days=3), "late-level")  # arrives late
    engine.entitlement_consume(customer, storage, D("2"), "upload", timestamp=START)

    subscription = customer.subscriptions.get()
    subscription.current_period_start = utc(2025, 3, 20)  # a plan change moved the period
    subscription.current_period_end = utc(2025, 4, 20)
    subscription.save()
    report(customer, transfer, 4, utc(2025, 3, 25), "in-stored-period")
    subscription.status, subscription.ended_at = SubscriptionStatus.CANCELED, utc(2025, 4, 5)
    subscription.save()
    report(customer, transfer, 3, utc(2025, 4, 10), "between-subscriptions")
    SubscriptionFactory(customer=customer, plan=plan, started_at=utc(2025, 4, 15, 8))
    report(customer, transfer, 2, utc(2025, 4, 16), "second-subscription")
    newcomer = CustomerFactory()
    report(newcomer, transfer, 7, utc(2025, 2, 2), "before-subscribing")
    SubscriptionFactory(customer=newcomer, plan=plan, started_at=utc(2025, 2, 10))
    report(newcomer, transfer, 8, utc(2025, 2, 12), "after-subscribing")
    before = counters()

    result = usage_counters_rebuild()

    assert result.drifts == []
    assert result.events == UsageEvent.objects.count() == 97
    assert result.counters == len(before) == UsageCounter.objects.count()
    assert counters() == before


def test_drift_is_reported_and_fixed_and_drawn_is_kept(transfer, storage, customer):
    GrantFactory(customer=customer, feature=transfer, quantity=D("20"), effective_at=START)
    for day in range(3):
        engine.entitlement_consume(
            customer, transfer, D("25"), f"t-{day}", timestamp=utc(2025, 2, 1 + day)
        )
        report(customer, storage, 40 + day, utc(2025, 2, 1 + day), f"s-{day}")
    period = UsageCounter.objects.get(feature=transfer, window=Reset.BILLING_PERIOD)
    assert (period.used, period.drawn) == (50, 0)  # 25 + 25 fit the allowance of 50...
    engine.entitlement_consume(customer, transfer, D("5"), "t-3", timestamp=utc(2025, 2, 4))
    period.refresh_from_db()
    assert (period.used, period.drawn) == (55, 5)  # ...the third is denied, the fourth drawn
    UsageCounter.objects.filter(pk=period.pk).update(used=D("999"))
    UsageCounter.objects.filter(feature=transfer, window=Reset.DAY, start=utc(2025, 2, 2)).delete()
    UsageCounter.objects.filter(feature=storage, window=Reset.NEVER).update(level=D("1"))
    UsageCounter.objects.create(
        customer=customer,
        feature=transfer,
        window=Reset.DAY,
        start=utc(2025, 3, 1),
        end=utc(2025, 3, 2),
        used=D("3"),
    )

    result = usage_counters_rebuild()

    drifts = {(d.feature, d.window, d.start): d for d in result.drifts}
    assert len(drifts) == 4 and result.missing == 1
    stale = drifts[(transfer.key, Reset.BILLING_PERIOD, START)]
    assert (stale.used, stale.expected_used) == (999, 55)
    assert drifts[(transfer.key, Reset.DAY, utc(2025, 2, 2))].missing
    assert drifts[(transfer.key, Reset.DAY, utc(2025, 3, 1))].expected_used == 0
    level = drifts[(storage.key, Reset.NEVER, START)]
    assert (level.level, level.expected_level) == (1, 42)
    period.refresh_from_db()
    assert (period.used, period.drawn) == (55, 5)
    assert engine.entitlement_check(customer, transfer, utc(2025, 2, 5)).usage == 55
    assert engine.entitlement_check(customer, storage, utc(2025, 2, 5)).usage == 42
    assert usage_counters_rebuild().drifts == []


def test_a_dry_run_reports_and_changes_nothing(transfer, customer):
    engine.entitlement_consume(customer, transfer, D("5"), "t-1", timestamp=utc(2025, 2, 1))
    UsageCounter.objects.filter(window=Reset.WEEK).update(used=D("0"))
    before = counters()

    result = usage_counters_rebuild(dry_run=True)

    assert [(d.window, d.used, d.expected_used) for d in result.drifts] == [("week", 0, 5)]
    assert counters() == before


def test_counters_are_built_from_events_alone(transfer, storage, customer):
    UsageEvent.objects.bulk_create(
        [
            UsageEventFactory.build(
                customer=customer,
                feature=transfer,
                quantity=D("0.5"),
                timestamp=START + timedelta(hours=7 * n),
            )
            for n in range(200)
        ]
        + [
            UsageEventFactory.build(
                customer=customer, feature=storage, quantity=D(level), timestamp=at
            )
            for level, at in [("30", utc(2025, 2, 3)), ("12.5", utc(2025, 2, 27))]
        ]
    )

    result = usage_counters_rebuild()

    assert result.missing == len(result.drifts) == UsageCounter.objects.count()
    at = utc(2025, 2, 27, 12)
    assert (
        engine.entitlement_check(customer, transfer, at).usage == D("0.5") * 96
    )  # the whole period
    assert engine.entitlement_check(customer, storage, at).usage == D("12.5")
    assert usage_counters_rebuild().drifts == []


def test_the_command_prints_each_drift_and_a_summary(transfer, customer):
    engine.entitlement_consume(customer, transfer, D("5"), "t-1", timestamp=utc(2025, 2, 1))
    UsageCounter.objects.filter(window=Reset.MONTH).update(used=D("7"))
    out = StringIO()

    call_command("rebuild_usage_counters", "--dry-run", stdout=out)
    call_command("rebuild_usage_counters", stdout=out)
    call_command("rebuild_usage_counters", "--customer", "acme", stdout=out)

    lines = out.getvalue().splitlines()
    drift = f"drift: acme / {transfer.key} / month from 2025-02-01 00:00: used 7 -> 5"
    assert lines == [
        drift,
        "1 events, 5 counters checked: 1 drifted (0 missing), dry run: nothing changed.",
        drift,
        "1 events, 5 counters checked: 1 drifted (0 missing), 1 fixed.",
        "1 events, 5 counters checked: 0 drifted (0 missing), 0 fixed.",
    ]


def test_the_command_rejects_an_unknown_customer(db):
    with pytest.raises(CommandError, match="nobody"):
        call_command("rebuild_usage_counters", "--customer", "nobody", stdout=StringIO())


def test_since_leaves_the_windows_of_archived_events_alone(transfer, customer):
    """After older events are archived out of the ledger, a rebuild from the cutoff keeps the
    counters of the windows that began earlier (`never` among them)."""
    for day, at in enumerate([utc(2025, 2, 10), utc(2025, 3, 10), utc(2025, 4, 10)]):
        engine.entitlement_consume(customer, transfer, D("5"), f"t-{day}", timestamp=at)
    UsageEvent.objects.filter(timestamp__lt=utc(2025, 4, 1)).delete()  # archived
    UsageCounter.objects.filter(window=Reset.DAY, start=utc(2025, 4, 10)).update(used=D("9"))
    out = StringIO()

    call_command("rebuild_usage_counters", "--since", "2025-04-01", stdout=out)

    assert out.getvalue().splitlines() == [
        f"drift: acme / {transfer.key} / day from 2025-04-10 00:00: used 9 -> 5",
        "1 events, 3 counters checked: 1 drifted (0 missing), 1 fixed.",  # day, week, month
    ]
    never = UsageCounter.objects.get(window=Reset.NEVER)
    assert never.used == 15
    assert engine.entitlement_check(customer, transfer, utc(2025, 4, 11)).usage == 5
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        call_command("rebuild_usage_counters", "--since", "April", stdout=StringIO())
