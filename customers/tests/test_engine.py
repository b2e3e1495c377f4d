"""The entitlement engine against DESIGN.md "Customers and the engine": precedence, results by
kind, reset windows, grants, soft and hard limits, latest and sum, customers without a
subscription, errors, dry runs, idempotency and batches.

Times are explicit (`at=` for a check, `timestamp=` for usage) rather than frozen: the
subscription below starts on January 31, so its periods run Jan 31 -> Feb 28 -> Mar 31.
"""

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from catalog.models import Enforcement, Reset
from core.errors import Conflict, InvalidInput, NotFound
from customers import engine, services
from customers.models import Grant, UsageCounter, UsageEvent
from customers.tests.factories import (
    CustomerFactory,
    EntitlementOverrideFactory,
    FeatureFactory,
    GrantFactory,
    PlanEntitlementFactory,
    PlanFactory,
    SubscriptionFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal
START = datetime(2025, 1, 31, 10, tzinfo=UTC)  # the subscription's anchor
_event_ids = itertools.count()


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def consume(customer, feature, quantity, at, *, event_id=None, **options):
    return engine.entitlement_consume(
        customer,
        feature.key,
        D(quantity),
        event_id or f"consume-{next(_event_ids)}",
        timestamp=at,
        **options,
    )


def report(customer, feature, quantity, at, *, event_id=None):
    return engine.usage_record_batch(
        [
            {
                "event_id": event_id or f"report-{next(_event_ids)}",
                "customer": customer.external_id,
                "feature": feature.key,
                "quantity": str(quantity),
                "timestamp": at.isoformat(),
            }
        ]
    )


def check(customer, feature, at):
    return engine.entitlement_check(customer, feature.key, at=at)


def consumed(grant: Grant) -> Decimal:
    grant.refresh_from_db()
    return grant.consumed


@pytest.fixture
def plan():
    return PlanFactory(name="Basic")


@pytest.fixture
def customer(plan):
    customer = CustomerFactory(name="Acme")
    SubscriptionFactory(customer=customer, plan=plan, started_at=START)
    return customer


def metered(plan, limit="100", *, latest=False, **values):
    """A metered feature in `plan` with `limit` (hard, reset each billing period by default)."""
    feature = FeatureFactory(latest=True) if latest else FeatureFactory(metered=True)
    if limit is None:
        values["unlimited"] = True
    PlanEntitlementFactory(
        plan=plan, feature=feature, limit=None if limit is None else D(limit), **values
    )
    return feature


# --- precedence: override, plan, none -------------------------------------------------------


def test_a_plan_entitlement_applies_when_there_is_no_override(customer, plan):
    transfer = metered(plan, "100")

    e = check(customer, transfer, utc(2025, 2, 10))

    assert (e.source, e.has_access, e.limit, e.usage, e.balance) == ("plan", True, 100, 0, 100)
    assert (e.granted, e.overage, e.unlimited, e.enforcement) == (0, 0, False, "hard")
    assert (e.period_start, e.period_end) == (START, utc(2025, 2, 28, 10))
    assert e.resets_at == utc(2025, 2, 28, 10)


def test_an_override_beats_the_plan(customer, plan):
    storage = metered(plan, "1000")
    EntitlementOverrideFactory(customer=customer, feature=storage, limit=D("2000"))

    e = check(customer, storage, utc(2025, 2, 10))

    assert (e.source, e.limit, e.balance) == ("override", 2000, 2000)


def test_an_override_applies_only_within_its_time_window(customer, plan):
    transfer = metered(plan, "100")
    EntitlementOverrideFactory(
        customer=customer,
        feature=transfer,
        limit=D("500"),
        reason="Launch promotion",
        starts_at=utc(2025, 2, 5),
        ends_at=utc(2025, 2, 12),
    )

    def limit_at(at):
        e = check(customer, transfer, at)
        return e.source, e.limit

    assert limit_at(utc(2025, 2, 4, 23, 59)) == ("plan", 100)
    assert limit_at(utc(2025, 2, 5)) == ("override", 500)  # starts_at is inclusive
    assert limit_at(utc(2025, 2, 11, 23, 59)) == ("override", 500)
    assert limit_at(utc(2025, 2, 12)) == ("plan", 100)  # ends_at is exclusive


def test_an_override_limits_consume_within_its_window_only(customer, plan):
    transfer = metered(plan, "10")
    EntitlementOverrideFactory(
        customer=customer,
        feature=transfer,
        limit=D("50"),
        starts_at=utc(2025, 2, 5),
        ends_at=utc(2025, 2, 12),
    )

    assert consume(customer, transfer, 30, utc(2025, 2, 6)).allowed
    # Once the promotion is over the plan's 10 apply again, and 30 are already used.
    denied = consume(customer, transfer, 1, utc(2025, 2, 13))
    assert (denied.allowed, denied.reason) == (False, "limit_exceeded")
    assert denied.entitlement.usage == 30


def test_a_feature_may_come_from_an_override_alone(customer, plan):
    metered(plan, "100")
    extra = FeatureFactory(metered=True, name="API calls")
    EntitlementOverrideFactory(customer=customer, feature=extra, limit=D("5"))

    e = check(customer, extra, utc(2025, 2, 10))
    result = consume(customer, extra, 5, utc(2025, 2, 10))

    assert (e.source, e.has_access, e.limit) == ("override", True, 5)
    assert result.allowed and result.entitlement.balance == 0
    assert not result.entitlement.has_access


def test_the_newest_of_overlapping_overrides_wins(customer, plan):
    transfer = metered(plan, "100")
    older = EntitlementOverrideFactory(
        customer=customer, feature=transfer, limit=D("300"), reason="Annual deal"
    )
    newer = EntitlementOverrideFactory(
        customer=customer,
        feature=transfer,
        limit=D("900"),
        reason="Holiday promotion",
        starts_at=utc(2025, 2, 1),
        ends_at=utc(2025, 2, 15),
    )
    older.__class__.objects.filter(pk=older.pk).update(created_at=utc(2025, 1, 1))
    newer.__class__.objects.filter(pk=newer.pk).update(created_at=utc(2025, 1, 20))

    assert check(customer, transfer, utc(2025, 2, 10)).limit == 900
    assert check(customer, transfer, utc(2025, 2, 20)).limit == 300  # the newer one ended


def test_the_newest_override_wins_even_when_the_older_one_starts_later(customer, plan):
    transfer = metered(plan, "100")
    made_first = EntitlementOverrideFactory(customer=customer, feature=transfer, limit=D("900"))
    made_second = EntitlementOverrideFactory(
        customer=customer, feature=transfer, limit=D("300"), starts_at=utc(2025, 1, 1)
    )
    made_first.__class__.objects.filter(pk=made_first.pk).update(created_at=utc(2025, 1, 1))
    made_second.__class__.objects.filter(pk=made_second.pk).update(created_at=utc(2025, 1, 2))

    assert check(customer, transfer, utc(2025, 2, 10)).limit == 300


def test_an_ended_override_gives_the_plan_back(customer, plan):
    transfer = metered(plan, "100")
    deal = EntitlementOverrideFactory(
        customer=customer, feature=transfer, limit=D("500"), starts_at=utc(2025, 1, 1)
    )

    services.override_end(override=deal, at=utc(2025, 2, 10))

    assert check(customer, transfer, utc(2025, 2, 9)).limit == 500
    assert check(customer, transfer, utc(2025, 2, 10)).source == "plan"


# --- results by kind ------------------------------------------------------------------------


def test_a_boolean_feature_is_a_gate(customer, plan):
    versioning = FeatureFactory(name="File versioning")
    encryption = FeatureFactory(name="Encryption")
    PlanEntitlementFactory(plan=plan, feature=versioning, enabled=True)
    PlanEntitlementFactory(plan=plan, feature=encryption, enabled=False)
    outside_plan = FeatureFactory(name="SSO")

    assert check(customer, versioning, START).has_access is True
    assert check(customer, encryption, START).has_access is False
    e = check(customer, outside_plan, START)
    assert (e.has_access, e.source) == (False, None)


def test_an_override_can_switch_a_boolean_feature_off_or_on(customer, plan):
    versioning = FeatureFactory()
    sso = FeatureFactory()
    PlanEntitlementFactory(plan=plan, feature=versioning, enabled=True)
    EntitlementOverrideFactory(customer=customer, feature=versioning, enabled=False)
    EntitlementOverrideFactory(customer=customer, feature=sso, enabled=True)

    off = check(customer, versioning, START)
    on = check(customer, sso, START)

    assert (off.has_access, off.source) == (False, "override")
    assert (on.has_access, on.source) == (True, "override")


def test_a_config_feature_gives_its_value(customer, plan):
    tier = FeatureFactory(config=True, name="Support tier")
    PlanEntitlementFactory(plan=plan, feature=tier, value="standard")

    assert check(customer, tier, START).value == "standard"
    EntitlementOverrideFactory(customer=customer, feature=tier, value="dedicated")
    e = check(customer, tier, START)
    assert (e.has_access, e.value, e.source) == (True, "dedicated", "override")


def test_an_unlimited_entitlement_allows_everything_and_still_counts(customer, plan):
    transfer = metered(plan, None)

    result = consume(customer, transfer, "1000000", utc(2025, 2, 1))

    e = result.entitlement
    assert result.allowed
    assert (e.unlimited, e.limit, e.balance, e.overage) == (True, None, None, 0)
    assert (e.usage, e.has_access) == (1000000, True)


# --- reset windows ----------------------------------------------------------------------------


def test_billing_period_usage_resets_at_the_clamped_period_end(customer, plan):
    transfer = metered(plan, "100")
    consume(customer, transfer, 40, utc(2025, 2, 28, 9, 59))

    in_february = check(customer, transfer, utc(2025, 2, 28, 9, 59, 59))
    next_period = check(customer, transfer, utc(2025, 2, 28, 10))

    assert (in_february.usage, in_february.resets_at) == (40, utc(2025, 2, 28, 10))
    assert next_period.usage == 0
    assert (next_period.period_start, next_period.period_end) == (
        utc(2025, 2, 28, 10),
        utc(2025, 3, 31, 10),  # the anchor day comes back after February
    )


def test_billing_period_of_a_yearly_plan_anchored_on_february_29(plan):
    yearly = PlanFactory(interval="year")
    transfer = metered(yearly, "100")
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=yearly, started_at=utc(2024, 2, 29, 12))
    consume(customer, transfer, 60, utc(2024, 12, 31))

    late = check(customer, transfer, utc(2025, 2, 28, 11, 59))
    renewed = check(customer, transfer, utc(2025, 2, 28, 12))

    assert (late.usage, late.period_end) == (60, utc(2025, 2, 28, 12))
    assert (renewed.usage, renewed.period_end) == (0, utc(2026, 2, 28, 12))


def test_the_stored_period_wins_over_the_anchor_grid(customer, plan):
    """A plan change may move the current period off the anchor's grid."""
    transfer = metered(plan, "100")
    subscription = customer.subscriptions.get()
    subscription.current_period_start = utc(2025, 2, 10)
    subscription.current_period_end = utc(2025, 3, 10)
    subscription.save()
    consume(customer, transfer, 5, utc(2025, 2, 9))
    consume(customer, transfer, 7, utc(2025, 2, 11))

    e = check(customer, transfer, utc(2025, 2, 20))

    assert (e.period_start, e.period_end, e.usage) == (utc(2025, 2, 10), utc(2025, 3, 10), 7)


def test_calendar_month_reset_across_a_leap_day(customer, plan):
    transfer = metered(plan, "100", reset=Reset.MONTH)
    consume(customer, transfer, 30, utc(2024, 2, 29, 23, 59))  # before the subscription: fine

    feb = check(customer, transfer, utc(2024, 2, 29, 23, 59, 59))
    mar = check(customer, transfer, utc(2024, 3, 1))

    assert (feb.usage, feb.period_start, feb.resets_at) == (30, utc(2024, 2, 1), utc(2024, 3, 1))
    assert (mar.usage, mar.resets_at) == (0, utc(2024, 4, 1))


def test_calendar_month_reset_ignores_the_billing_anchor(customer, plan):
    transfer = metered(plan, "100", reset=Reset.MONTH)
    consume(customer, transfer, 10, utc(2025, 2, 27))  # billing period Jan 31 - Feb 28
    consume(customer, transfer, 20, utc(2025, 2, 28, 11))  # next billing period, same month

    assert check(customer, transfer, utc(2025, 2, 28, 12)).usage == 30
    assert check(customer, transfer, utc(2025, 3, 1)).usage == 0


def test_weekly_reset_runs_from_monday_across_the_year_end(customer, plan):
    transfer = metered(plan, "10", reset=Reset.WEEK)
    consume(customer, transfer, 10, utc(2025, 12, 29, 8))  # Monday

    sunday = consume(customer, transfer, 1, utc(2026, 1, 4, 23, 59))
    monday = consume(customer, transfer, 1, utc(2026, 1, 5))

    assert (sunday.allowed, sunday.reason) == (False, "limit_exceeded")
    assert sunday.entitlement.period_start == utc(2025, 12, 29)
    assert monday.allowed
    assert (monday.entitlement.usage, monday.entitlement.resets_at) == (1, utc(2026, 1, 12))


def test_daily_reset_at_midnight_utc(customer, plan):
    transfer = metered(plan, "5", reset=Reset.DAY)
    assert consume(customer, transfer, 5, utc(2025, 3, 31, 23)).allowed

    assert not consume(customer, transfer, 1, utc(2025, 3, 31, 23, 59)).allowed
    april = consume(customer, transfer, 5, utc(2025, 4, 1))
    assert april.allowed
    assert (april.entitlement.period_start, april.entitlement.resets_at) == (
        utc(2025, 4, 1),
        utc(2025, 4, 2),
    )


def test_never_reset_counts_since_the_subscription_started(customer, plan):
    seats = metered(plan, "10", reset=Reset.NEVER)
    consume(customer, seats, 6, utc(2025, 2, 1))
    consume(customer, seats, 3, utc(2025, 7, 1))

    e = check(customer, seats, utc(2026, 1, 1))

    assert (e.usage, e.balance) == (9, 1)
    assert (e.period_start, e.period_end, e.resets_at) == (START, None, None)


def test_each_reset_kind_keeps_its_own_window(customer, plan):
    """Changing a plan's reset never finds a stale counter: every kind is kept per event."""
    transfer = metered(plan, "100", reset=Reset.DAY)
    consume(customer, transfer, 4, utc(2025, 2, 3, 9))  # Monday
    consume(customer, transfer, 6, utc(2025, 2, 4, 9))
    entitlement = transfer.plan_entitlements.get()

    usage = {}
    for reset in Reset.values:
        entitlement.reset = reset
        entitlement.save()
        usage[reset] = check(customer, transfer, utc(2025, 2, 4, 12)).usage

    assert usage == {"billing_period": 10, "month": 10, "week": 10, "day": 6, "never": 10}


# --- grants -----------------------------------------------------------------------------------


def test_grants_are_used_after_the_period_allowance(customer, plan):
    transfer = metered(plan, "10")
    grant = GrantFactory(customer=customer, feature=transfer, quantity=D("5"), effective_at=START)

    first = consume(customer, transfer, 10, utc(2025, 2, 1))
    assert consumed(grant) == 0
    second = consume(customer, transfer, 3, utc(2025, 2, 2))

    assert consumed(grant) == 3
    assert (first.entitlement.balance, second.entitlement.balance) == (5, 2)
    assert (second.entitlement.granted, second.entitlement.usage) == (2, 13)


def test_grants_burn_soonest_expiring_first_and_never_expiring_last(customer, plan):
    transfer = metered(plan, "10")
    never = GrantFactory(customer=customer, feature=transfer, quantity=D("5"), effective_at=START)
    later = GrantFactory(
        customer=customer,
        feature=transfer,
        quantity=D("5"),
        effective_at=START,
        expires_at=utc(2025, 6, 1),
    )
    sooner = GrantFactory(
        customer=customer,
        feature=transfer,
        quantity=D("5"),
        effective_at=START,
        expires_at=utc(2025, 4, 1),
    )

    consume(customer, transfer, 17, utc(2025, 2, 1))  # 10 allowance + 5 sooner + 2 later
    assert [consumed(g) for g in (sooner, later, never)] == [5, 2, 0]
    consume(customer, transfer, 5, utc(2025, 2, 2))
    assert [consumed(g) for g in (sooner, later, never)] == [5, 5, 2]


def test_a_grants_remainder_outlives_the_period_and_the_allowance_resets(customer, plan):
    transfer = metered(plan, "10")
    grant = GrantFactory(customer=customer, feature=transfer, quantity=D("8"), effective_at=START)
    consume(customer, transfer, 13, utc(2025, 2, 1))

    march = check(customer, transfer, utc(2025, 3, 1))

    assert consumed(grant) == 3
    assert (march.usage, march.granted, march.balance) == (0, 5, 15)


def test_an_expired_grant_no_longer_counts(customer, plan):
    transfer = metered(plan, "10")
    GrantFactory(
        customer=customer,
        feature=transfer,
        quantity=D("5"),
        effective_at=START,
        expires_at=utc(2025, 2, 15),
    )
    consume(customer, transfer, 10, utc(2025, 2, 1))

    before = check(customer, transfer, utc(2025, 2, 14, 23, 59))
    after = consume(customer, transfer, 1, utc(2025, 2, 15))

    assert (before.granted, before.balance) == (5, 5)
    assert (after.allowed, after.entitlement.granted, after.entitlement.balance) == (False, 0, 0)


def test_a_grant_counts_only_from_its_effective_time(customer, plan):
    transfer = metered(plan, "0")
    GrantFactory(customer=customer, feature=transfer, effective_at=utc(2025, 2, 10))

    assert not consume(customer, transfer, 1, utc(2025, 2, 9)).allowed
    assert consume(customer, transfer, 1, utc(2025, 2, 10)).allowed


def test_a_voided_grant_no_longer_counts(customer, plan):
    transfer = metered(plan, "10")
    grant = GrantFactory(customer=customer, feature=transfer, quantity=D("5"), effective_at=START)
    consume(customer, transfer, 12, utc(2025, 2, 1))

    services.grant_void(grant=grant, at=utc(2025, 2, 10))

    assert check(customer, transfer, utc(2025, 2, 9)).granted == 3
    after = check(customer, transfer, utc(2025, 2, 10))
    assert (after.granted, after.balance, after.usage, after.overage) == (0, 0, 12, 0)
    assert not consume(customer, transfer, 1, utc(2025, 2, 11)).allowed


def test_a_grant_alone_gives_access_to_a_feature_outside_the_plan(customer):
    api_calls = FeatureFactory(metered=True)
    grant = GrantFactory(customer=customer, feature=api_calls, quantity=D("3"), effective_at=START)

    e = check(customer, api_calls, utc(2025, 2, 1))
    results = [consume(customer, api_calls, 1, utc(2025, 2, 1)).allowed for _ in range(4)]

    assert (e.source, e.has_access, e.limit, e.granted, e.balance) == ("grant", True, 0, 3, 3)
    assert results == [True, True, True, False]
    assert consumed(grant) == 3


# --- soft and hard limits -----------------------------------------------------------------------


def test_a_hard_limit_denies_what_the_balance_cannot_cover_and_records_nothing(customer, plan):
    transfer = metered(plan, "10")
    consume(customer, transfer, 7, utc(2025, 2, 1))

    denied = consume(customer, transfer, 4, utc(2025, 2, 2), event_id="too-much")

    assert (denied.allowed, denied.reason) == (False, "limit_exceeded")
    assert (denied.entitlement.usage, denied.entitlement.balance) == (7, 3)
    assert not UsageEvent.objects.filter(event_id="too-much").exists()
    assert check(customer, transfer, utc(2025, 2, 3)).usage == 7


def test_a_hard_limit_allows_exactly_the_balance(customer, plan):
    transfer = metered(plan, "10")

    result = consume(customer, transfer, "10", utc(2025, 2, 1))

    e = result.entitlement
    assert result.allowed
    assert (e.usage, e.balance, e.overage, e.has_access) == (10, 0, 0, False)


def test_a_soft_limit_allows_and_counts_overage(customer, plan):
    transfer = metered(plan, "10", enforcement=Enforcement.SOFT)

    result = consume(customer, transfer, 25, utc(2025, 2, 1))

    e = result.entitlement
    assert result.allowed
    assert (e.usage, e.balance, e.overage, e.has_access, e.enforcement) == (25, 0, 15, True, "soft")


def test_a_soft_limit_uses_grants_before_counting_overage(customer, plan):
    transfer = metered(plan, "10", enforcement=Enforcement.SOFT)
    grant = GrantFactory(customer=customer, feature=transfer, quantity=D("5"), effective_at=START)

    e = consume(customer, transfer, 20, utc(2025, 2, 1)).entitlement

    assert consumed(grant) == 5
    assert (e.usage, e.granted, e.overage, e.balance) == (20, 0, 5, 0)


# --- latest and sum ------------------------------------------------------------------------------


def test_sum_usage_adds_every_event(customer, plan):
    transfer = metered(plan, "100")
    report(customer, transfer, "2.5", utc(2025, 2, 1))
    report(customer, transfer, "1.25", utc(2025, 2, 2))
    consume(customer, transfer, "0.25", utc(2025, 2, 3))

    assert check(customer, transfer, utc(2025, 2, 4)).usage == D("4")


def test_latest_usage_is_the_last_reported_level_and_may_go_down(customer, plan):
    storage = metered(plan, "100", latest=True)
    report(customer, storage, 50, utc(2025, 2, 1))
    report(customer, storage, 80, utc(2025, 2, 2))
    report(customer, storage, 30, utc(2025, 2, 3))

    e = check(customer, storage, utc(2025, 2, 4))

    assert (e.usage, e.balance, e.aggregation) == (30, 70, "latest")


def test_latest_usage_takes_the_level_with_the_latest_timestamp_not_the_last_arrival(
    customer, plan
):
    storage = metered(plan, "100", latest=True)
    report(customer, storage, 60, utc(2025, 2, 3))
    report(customer, storage, 10, utc(2025, 2, 1))  # arrives late

    assert check(customer, storage, utc(2025, 2, 4)).usage == 60


def test_latest_consume_checks_and_records_level_plus_quantity(customer, plan):
    storage = metered(plan, "100", latest=True)
    report(customer, storage, 90, utc(2025, 2, 1))

    allowed = consume(customer, storage, 10, utc(2025, 2, 2), event_id="upload-1")
    denied = consume(customer, storage, "0.5", utc(2025, 2, 3))

    assert (allowed.allowed, allowed.entitlement.usage) == (True, 100)
    assert UsageEvent.objects.get(event_id="upload-1").quantity == 100
    assert (denied.allowed, denied.reason, denied.entitlement.usage) == (
        False,
        "limit_exceeded",
        100,
    )


def test_latest_grants_add_capacity_and_are_not_consumed(customer, plan):
    storage = metered(plan, "100", latest=True)
    grant = GrantFactory(customer=customer, feature=storage, quantity=D("20"), effective_at=START)
    report(customer, storage, 110, utc(2025, 2, 1))

    e = check(customer, storage, utc(2025, 2, 2))
    assert (e.usage, e.granted, e.balance, e.overage) == (110, 20, 10, 0)
    assert consume(customer, storage, 10, utc(2025, 2, 3)).allowed
    assert not consume(customer, storage, 1, utc(2025, 2, 4)).allowed
    report(customer, storage, 135, utc(2025, 2, 5))

    e = check(customer, storage, utc(2025, 2, 6))
    assert (e.usage, e.balance, e.overage, e.has_access) == (135, 0, 15, False)
    assert consumed(grant) == 0


def test_latest_level_carries_over_into_the_next_period_until_reported_again(customer, plan):
    storage = metered(plan, "100", latest=True)
    report(customer, storage, 70, utc(2025, 2, 20))

    march = check(customer, storage, utc(2025, 3, 5))
    report(customer, storage, 40, utc(2025, 3, 6))

    assert march.usage == 70
    assert check(customer, storage, utc(2025, 3, 7)).usage == 40


# --- customers without a subscription -------------------------------------------------------------


def test_a_customer_without_a_subscription_has_no_access(plan):
    transfer = metered(plan, "100")
    versioning = FeatureFactory()
    PlanEntitlementFactory(plan=plan, feature=versioning)
    nobody = CustomerFactory()

    result = consume(nobody, transfer, 1, utc(2025, 2, 1), event_id="no-sub")
    e = check(nobody, transfer, utc(2025, 2, 1))

    assert (result.allowed, result.reason) == (False, "no_access")
    assert (result.entitlement.has_access, result.entitlement.source) == (False, None)
    assert (e.has_access, e.source) == (False, None)
    assert check(nobody, versioning, utc(2025, 2, 1)).has_access is False
    assert engine.entitlements_resolve(nobody, at=utc(2025, 2, 1)) == []
    assert not UsageEvent.objects.filter(event_id="no-sub").exists()


def test_a_canceled_subscription_gives_no_access(customer, plan):
    transfer = metered(plan, "100")
    services.subscription_cancel(subscription=customer.subscriptions.get(), at_period_end=False)

    result = consume(customer, transfer, 1, utc(2025, 2, 1))

    assert (result.allowed, result.reason) == (False, "no_access")


def test_a_feature_outside_the_plan_has_no_access(customer, plan):
    metered(plan, "100")
    other = FeatureFactory(metered=True)

    result = consume(customer, other, 1, utc(2025, 2, 1))

    assert (result.allowed, result.reason, result.entitlement.source) == (False, "no_access", None)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["boolean", "config"])
def test_consuming_a_feature_that_is_not_metered_is_invalid(customer, plan, kind):
    feature = FeatureFactory(config=kind == "config")
    PlanEntitlementFactory(plan=plan, feature=feature)

    with pytest.raises(InvalidInput) as raised:
        consume(customer, feature, 1, utc(2025, 2, 1))

    assert raised.value.code == "not_metered"


def test_an_unknown_feature_is_not_found(customer):
    with pytest.raises(NotFound) as raised:
        engine.entitlement_check(customer, "no-such-feature")
    assert raised.value.code == "feature_not_found"
    with pytest.raises(NotFound):
        engine.entitlement_consume(customer, "no-such-feature", D("1"), "e-1")


@pytest.mark.parametrize(
    "quantity",
    ["0", "-1", "-0", " 5 ", "abc", "NaN", "Infinity", "0.00001", "1e15", "1000000000000000", 5],
)
def test_a_bad_quantity_is_invalid(customer, plan, quantity):
    transfer = metered(plan, "100")

    with pytest.raises(InvalidInput) as raised:
        engine.entitlement_consume(customer, transfer.key, quantity, "e-1")

    assert raised.value.code == "invalid" and list(raised.value.details) == ["quantity"]


@pytest.mark.parametrize("event_id", [None, "", "   ", "x" * 256])
def test_a_missing_or_overlong_event_id_is_invalid(customer, plan, event_id):
    transfer = metered(plan, "100")

    with pytest.raises(InvalidInput) as raised:
        engine.entitlement_consume(customer, transfer.key, D("1"), event_id)

    assert raised.value.code == "invalid" and list(raised.value.details) == ["event_id"]


def test_a_bad_timestamp_is_invalid(customer, plan):
    transfer = metered(plan, "100")

    with pytest.raises(InvalidInput) as raised:
        engine.entitlement_consume(customer, transfer.key, D("1"), "e-1", timestamp="yesterday")

    assert raised.value.code == "invalid" and list(raised.value.details) == ["timestamp"]


# --- dry runs -------------------------------------------------------------------------------------


def test_a_dry_run_answers_without_recording_anything(customer, plan):
    transfer = metered(plan, "10")
    grant = GrantFactory(customer=customer, feature=transfer, quantity=D("5"), effective_at=START)
    consume(customer, transfer, 8, utc(2025, 2, 1))
    counters = list(UsageCounter.objects.values_list("window", "used", "drawn"))

    allowed = consume(customer, transfer, 4, utc(2025, 2, 2), event_id="probe", dry_run=True)
    denied = consume(customer, transfer, 8, utc(2025, 2, 2), event_id="probe", dry_run=True)

    assert (allowed.allowed, allowed.entitlement.usage, allowed.entitlement.balance) == (
        True,
        12,
        3,
    )
    assert (denied.allowed, denied.reason) == (False, "limit_exceeded")
    assert not UsageEvent.objects.filter(event_id="probe").exists()
    assert list(UsageCounter.objects.values_list("window", "used", "drawn")) == counters
    assert consumed(grant) == 0
    # The event id is still free for the real request.
    assert consume(customer, transfer, 4, utc(2025, 2, 2), event_id="probe").allowed


def test_a_dry_run_of_a_new_window_creates_no_counter(customer, plan):
    transfer = metered(plan, "10")

    result = consume(customer, transfer, 1, utc(2025, 2, 1), dry_run=True)

    assert result.allowed
    assert not UsageCounter.objects.exists()


# --- idempotency ----------------------------------------------------------------------------------


def test_the_same_event_id_twice_counts_once_and_replays_the_first_outcome(customer, plan):
    transfer = metered(plan, "10")

    first = consume(customer, transfer, 6, utc(2025, 2, 1), event_id="req-1")
    again = consume(customer, transfer, 6, utc(2025, 2, 1), event_id="req-1")

    assert (first.allowed, first.replayed) == (True, False)
    assert (again.allowed, again.reason, again.replayed) == (True, None, True)
    assert again.entitlement.usage == 6
    assert UsageEvent.objects.filter(event_id="req-1").count() == 1
    # A replay is allowed even though the balance could no longer cover it.
    assert consume(customer, transfer, 6, utc(2025, 2, 2), event_id="req-1").allowed
    assert check(customer, transfer, utc(2025, 2, 3)).usage == 6


def test_an_event_reported_in_a_batch_then_consumed_counts_once(customer, plan):
    transfer = metered(plan, "10")
    report(customer, transfer, 3, utc(2025, 2, 1), event_id="shared")

    result = consume(customer, transfer, 3, utc(2025, 2, 1), event_id="shared")

    assert (result.allowed, result.replayed) == (True, True)
    assert check(customer, transfer, utc(2025, 2, 2)).usage == 3


def test_a_consumed_event_reported_again_in_a_batch_is_a_duplicate(customer, plan):
    transfer = metered(plan, "10")
    consume(customer, transfer, 3, utc(2025, 2, 1), event_id="shared")

    result = report(customer, transfer, 3, utc(2025, 2, 1), event_id="shared")

    assert (result.accepted, result.duplicates, result.rejected) == (0, 1, [])
    assert check(customer, transfer, utc(2025, 2, 2)).usage == 3


def test_the_same_event_id_for_another_feature_is_a_conflict(customer, plan):
    transfer = metered(plan, "10")
    api_calls = metered(plan, "10")
    consume(customer, transfer, 1, utc(2025, 2, 1), event_id="req-1")

    with pytest.raises(Conflict) as raised:
        consume(customer, api_calls, 1, utc(2025, 2, 1), event_id="req-1")

    assert raised.value.code == "idempotency_conflict"
    assert check(customer, api_calls, utc(2025, 2, 2)).usage == 0


def test_the_same_event_id_for_another_quantity_is_a_conflict(customer, plan):
    transfer = metered(plan, "10")
    consume(customer, transfer, 1, utc(2025, 2, 1), event_id="req-1")

    with pytest.raises(Conflict) as raised:
        consume(customer, transfer, 2, utc(2025, 2, 1), event_id="req-1")

    assert raised.value.code == "idempotency_conflict"


def test_event_ids_are_unique_per_customer_not_globally(customer, plan):
    transfer = metered(plan, "10")
    other = CustomerFactory()
    SubscriptionFactory(customer=other, plan=plan, started_at=START)

    consume(customer, transfer, 4, utc(2025, 2, 1), event_id="req-1")
    result = consume(other, transfer, 4, utc(2025, 2, 1), event_id="req-1")

    assert (result.allowed, result.replayed, result.entitlement.usage) == (True, False, 4)


def test_a_denied_request_can_be_retried_with_the_same_event_id(customer, plan):
    """A denial records nothing, so there is no first outcome to replay."""
    transfer = metered(plan, "10")
    consume(customer, transfer, 10, utc(2025, 2, 1))

    assert not consume(customer, transfer, 5, utc(2025, 2, 27), event_id="retry").allowed
    assert consume(customer, transfer, 5, utc(2025, 3, 1), event_id="retry").allowed


# --- batches --------------------------------------------------------------------------------------


def test_a_batch_reports_accepted_duplicates_and_rejected_per_event(customer, plan):
    transfer = metered(plan, "100")
    versioning = FeatureFactory()
    base = {"customer": customer.external_id, "feature": transfer.key, "quantity": "1"}
    consume(customer, transfer, 1, utc(2025, 2, 1), event_id="seen-before")

    result = engine.usage_record_batch(
        [
            {**base, "event_id": "a", "timestamp": "2025-02-02T10:00:00Z"},
            {**base, "event_id": "a", "timestamp": "2025-02-02T10:00:00Z"},  # duplicate in batch
            {**base, "event_id": "seen-before"},  # duplicate of a consume
            {**base, "event_id": "b", "customer": "nobody"},
            {**base, "event_id": "c", "feature": "nothing"},
            {**base, "event_id": "d", "feature": versioning.key},
            {**base, "event_id": "e", "quantity": "-2"},
            {**base, "event_id": "f", "timestamp": "not a time"},
            {**base, "event_id": ""},
            "not an object",
            {**base, "event_id": "g", "properties": ["not", "an", "object"]},
            {**base, "event_id": "h", "quantity": "2.5", "timestamp": "2025-02-03T00:00:00+02:00"},
        ]
    )

    assert (result.accepted, result.duplicates) == (2, 2)
    assert [(r["index"], r["error"]["code"]) for r in result.rejected] == [
        (3, "customer_not_found"),
        (4, "feature_not_found"),
        (5, "not_metered"),
        (6, "invalid"),
        (7, "invalid"),
        (8, "invalid"),
        (9, "invalid_event"),
        (10, "invalid"),
    ]
    assert [
        list(r["error"]["details"]) for r in result.rejected if r["index"] in (6, 7, 8, 10)
    ] == [
        ["quantity"],
        ["timestamp"],
        ["event_id"],
        ["properties"],
    ]
    assert all(r["error"]["message"] for r in result.rejected)
    assert check(customer, transfer, utc(2025, 2, 4)).usage == D("4.5")
    assert UsageEvent.objects.get(event_id="h").timestamp == utc(2025, 2, 2, 22)


def test_reported_usage_past_a_hard_limit_is_recorded_as_overage(customer, plan):
    transfer = metered(plan, "10")

    result = report(customer, transfer, 15, utc(2025, 2, 1))

    e = check(customer, transfer, utc(2025, 2, 2))
    assert result.accepted == 1
    assert (e.usage, e.balance, e.overage, e.has_access) == (15, 0, 5, False)


def test_reported_usage_burns_the_allowance_then_grants(customer, plan):
    transfer = metered(plan, "10")
    grant = GrantFactory(customer=customer, feature=transfer, quantity=D("5"), effective_at=START)

    report(customer, transfer, 12, utc(2025, 2, 1))
    report(customer, transfer, 6, utc(2025, 2, 2))

    e = check(customer, transfer, utc(2025, 2, 3))
    assert consumed(grant) == 5
    assert (e.usage, e.granted, e.overage) == (18, 0, 3)


def test_a_batch_applies_the_terms_in_force_at_each_events_time(customer, plan):
    transfer = metered(plan, "10")
    grant = GrantFactory(customer=customer, feature=transfer, quantity=D("50"), effective_at=START)
    EntitlementOverrideFactory(
        customer=customer, feature=transfer, limit=D("100"), starts_at=utc(2025, 2, 10)
    )
    base = {"customer": customer.external_id, "feature": transfer.key}

    engine.usage_record_batch(
        [
            {**base, "event_id": "before", "quantity": "10", "timestamp": "2025-02-05T00:00Z"},
            {**base, "event_id": "after", "quantity": "20", "timestamp": "2025-02-15T00:00Z"},
        ]
    )

    # Under the override's 100 the second event fits the allowance: the grant is untouched.
    assert consumed(grant) == 0
    assert check(customer, transfer, utc(2025, 2, 16)).usage == 30


def test_a_batch_covers_several_customers_features_and_windows(customer, plan):
    transfer = metered(plan, "100")
    storage = metered(plan, "100", latest=True)
    other = CustomerFactory()
    SubscriptionFactory(customer=other, plan=plan, started_at=START)
    events = []
    for day in range(1, 41):
        at = START + timedelta(days=day)
        for who in (customer, other):
            events.append(
                {
                    "event_id": f"t-{day}",
                    "customer": who.external_id,
                    "feature": transfer.key,
                    "quantity": "1",
                    "timestamp": at.isoformat(),
                }
            )
            events.append(
                {
                    "event_id": f"s-{day}",
                    "customer": who.external_id,
                    "feature": storage.key,
                    "quantity": str(day),
                    "timestamp": at.isoformat(),
                }
            )

    result = engine.usage_record_batch(events)

    assert (result.accepted, result.duplicates, result.rejected) == (160, 0, [])
    for who in (customer, other):
        # Feb 28 10:00 ends the first period: days 1..27 in it, 28..40 in the next.
        assert check(customer, transfer, utc(2025, 2, 28, 9)).usage == 27
        assert check(who, transfer, START + timedelta(days=40)).usage == 13
        assert check(who, storage, START + timedelta(days=40)).usage == 40


def test_a_batch_for_a_customer_without_a_subscription_is_still_recorded(plan):
    transfer = metered(plan, "100")
    nobody = CustomerFactory()

    result = report(nobody, transfer, 5, utc(2025, 2, 1))

    assert result.accepted == 1
    assert UsageEvent.objects.filter(customer=nobody).count() == 1


def test_an_empty_batch_records_nothing():
    result = engine.usage_record_batch([])

    assert (result.accepted, result.duplicates, result.rejected) == (0, 0, [])


# --- every entitlement at once --------------------------------------------------------------------


def test_resolve_lists_plan_override_and_grant_features_by_name(customer, plan):
    storage = FeatureFactory(latest=True, name="Storage")
    PlanEntitlementFactory(plan=plan, feature=storage, limit=D("1000"))
    tier = FeatureFactory(config=True, name="Support tier")
    PlanEntitlementFactory(plan=plan, feature=tier, value="priority")
    sso = FeatureFactory(name="Single sign-on")
    EntitlementOverrideFactory(customer=customer, feature=sso, enabled=True)
    api_calls = FeatureFactory(metered=True, name="API calls")
    GrantFactory(customer=customer, feature=api_calls, quantity=D("100"), effective_at=START)
    EntitlementOverrideFactory(customer=customer, feature=storage, limit=D("2000"))
    report(customer, storage, 1500, utc(2025, 2, 1))

    resolved = engine.entitlements_resolve(customer, at=utc(2025, 2, 2))

    assert [(e.name, e.source, e.has_access) for e in resolved] == [
        ("API calls", "grant", True),
        ("Single sign-on", "override", True),
        ("Storage", "override", True),
        ("Support tier", "plan", True),
    ]
    by_key = {e.feature: e for e in resolved}
    assert (by_key[storage.key].usage, by_key[storage.key].balance) == (1500, 500)
    assert by_key[tier.key].value == "priority"
    assert by_key[storage.key] == check(customer, storage, utc(2025, 2, 2))


def test_a_batch_of_a_thousand_events_over_a_thousand_days(customer, plan):
    """Five thousand counter rows to create and lock in one transaction."""
    transfer = metered(plan, "100")
    events = [
        {
            "event_id": f"day-{n}",
            "customer": customer.external_id,
            "feature": transfer.key,
            "quantity": "1",
            "timestamp": (START + timedelta(days=n)).isoformat(),
        }
        for n in range(1000)
    ]

    result = engine.usage_record_batch(events)

    assert (result.accepted, result.rejected) == (1000, [])
    assert check(customer, transfer, START + timedelta(days=999)).usage == 28  # Oct 31 - Nov 28
    assert check(customer, transfer, START).usage == 28
