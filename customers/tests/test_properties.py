"""The engine's invariants over generated sequences of operations (hypothesis): consume q,
report a batch (its events a little apart), grant units, start an override with any reset kind,
replay an earlier event, reverse an earlier event; time moves forward between them, across
billing periods, grant expiries and overrides that start between the events of a batch.

After every operation, under a hard limit:
- a consume is allowed exactly when the balance covers it, and an allowed consume adds no
  overage: usage never goes past allowance plus grants through consume; the balance is never
  negative; a denial changes nothing;
- usage equals the sum of the accepted events of the period not reversed, and what grants gave
  up equals what the periods drew, as the draw ledger says: each grant's `consumed` is what
  unreversed events drew from it plus what reversed ones drew while it had expired or been
  voided by the reversal (those units are not given back);
- a reversal drops the usage of the event's windows by its quantity, once (a second one
  changes nothing);
- burn-down order: a grant is drawn only once every grant in force expiring before it is used
  up;
- a replayed event_id changes nothing;
- at the end, every counter is what its window's events add up to (the rebuild finds no drift);
  then reversing every event leaves every counter at zero and gives back every unit of every
  grant still in force.
"""

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from catalog.models import Reset
from customers import engine
from customers.models import Grant, UsageCounter, UsageDraw, UsageEvent, UsageReversal
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

START = datetime(2025, 1, 31, 10, tzinfo=UTC)
D = Decimal

# Often no time between operations: a batch then meets the override just created.
hours = st.just(0) | st.integers(min_value=0, max_value=96)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("consume"), hours, st.integers(min_value=1, max_value=8)),
        st.tuples(
            st.just("report"),
            hours,
            st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=3),
        ),
        st.tuples(
            st.just("grant"),
            hours,
            st.tuples(
                st.integers(min_value=1, max_value=10),
                st.none() | st.integers(min_value=1, max_value=40),
            ),
        ),
        st.tuples(st.just("replay"), hours, st.integers(min_value=0, max_value=100)),
        st.tuples(st.just("reverse"), hours, st.integers(min_value=0, max_value=100)),
        st.tuples(
            st.just("override"),
            hours,
            st.tuples(
                st.sampled_from(list(Reset)),
                st.integers(min_value=0, max_value=15),
                st.integers(min_value=0, max_value=60),  # minutes from now until it starts
            ),
        ),
    ),
    min_size=1,
    max_size=12,
)


def snapshot(customer, feature) -> tuple:
    """Everything usage can change: counters, grants and the ledger. (An empty counter is no
    usage: the gate may create one for a new window before it decides.)"""
    return (
        sorted(
            UsageCounter.objects.filter(customer=customer, feature=feature)
            .exclude(used=0, drawn=0, level__isnull=True)
            .values_list("window", "start", "used", "drawn", "level")
        ),
        sorted(Grant.objects.filter(customer=customer).values_list("pk", "consumed")),
        UsageEvent.objects.filter(customer=customer).count(),
    )


def grants_agree_with_the_draw_ledger(customer, feature) -> None:
    """Each grant's `consumed` and the counters' `drawn`, recomputed from the draw ledger."""
    counted = UsageDraw.objects.filter(event__customer=customer, event__reversed_at=None)
    kept: dict[int, Decimal] = {}  # drawn by reversed events and not given back
    for reversal in UsageReversal.objects.filter(event__customer=customer):
        for draw in reversal.event.draws.exclude(grant=None):  # one per grant and event
            back = D(reversal.given_back.get(str(draw.grant_id), "0"))
            kept[draw.grant_id] = kept.get(draw.grant_id, D(0)) + draw.quantity - back
    for grant in Grant.objects.filter(customer=customer):
        drew = counted.filter(grant=grant).aggregate(total=Sum("quantity"))["total"] or D(0)
        assert grant.consumed == drew + kept.get(grant.pk, D(0)), grant
    drawn = UsageCounter.objects.filter(customer=customer, feature=feature).aggregate(
        total=Sum("drawn")
    )["total"] or D(0)
    assert drawn == (counted.exclude(grant=None).aggregate(total=Sum("quantity"))["total"] or 0)


def in_force(grant: Grant, at: datetime) -> bool:
    return grant.effective_at <= at and (grant.expires_at is None or at < grant.expires_at)


def expires_sooner(a: Grant, b: Grant) -> bool:
    return a.expires_at is not None and (b.expires_at is None or a.expires_at < b.expires_at)


@pytest.mark.django_db
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(limit=st.integers(min_value=0, max_value=15), steps=operations)
# The allowance is free again once the event that used it is reversed, while a later event's
# draw from the grant stands (the allowance left is `limit - (used - drawn)`).
@example(
    limit=10,
    steps=[("grant", 0, (10, None)), ("consume", 1, 8), ("consume", 1, 5), ("reverse", 1, 0),
           ("consume", 1, 9), ("reverse", 1, 1), ("report", 1, [6, 6])],
)  # fmt: skip
def test_engine_invariants_hold_for_any_sequence_of_operations(limit, steps):
    # A fresh customer, plan and feature for every example.
    plan = PlanFactory()
    feature = FeatureFactory(metered=True)
    PlanEntitlementFactory(plan=plan, feature=feature, limit=D(limit), reset=Reset.BILLING_PERIOD)
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan, started_at=START)
    ids = itertools.count()
    recorded: list[tuple[str, str, Decimal]] = []  # (how, event_id, quantity) accepted
    reversed_ids: set[str] = set()
    at = START

    for kind, advance, argument in steps:
        at += timedelta(hours=advance)
        before = engine.entitlement_check(customer, feature.key, at)
        grants_before = {g.pk: g.consumed for g in Grant.objects.filter(customer=customer)}
        state_before = snapshot(customer, feature)

        if kind == "consume":
            quantity = D(argument)
            event_id = f"c-{next(ids)}"
            result = engine.entitlement_consume(
                customer, feature.key, quantity, event_id, timestamp=at
            )
            after = engine.entitlement_check(customer, feature.key, at)
            assert result.allowed == (quantity <= before.balance)
            if result.allowed:
                recorded.append(("consume", event_id, quantity))
                assert after.usage == before.usage + quantity
                assert after.balance == before.balance - quantity
                assert after.overage == before.overage
            else:
                assert result.reason == "limit_exceeded"
                assert snapshot(customer, feature) == state_before

        elif kind == "report":
            batch = [
                {
                    "event_id": f"r-{next(ids)}",
                    "customer": customer.external_id,
                    "feature": feature.key,
                    "quantity": str(q),
                    "timestamp": (at + timedelta(minutes=25 * n)).isoformat(),
                }
                for n, q in enumerate(argument)
            ]
            result = engine.usage_record_batch(batch)
            assert (result.accepted, result.duplicates, result.rejected) == (len(batch), 0, [])
            recorded += [("report", e["event_id"], D(e["quantity"])) for e in batch]

        elif kind == "grant":
            quantity, days = argument
            GrantFactory(
                customer=customer,
                feature=feature,
                quantity=D(quantity),
                effective_at=at,
                expires_at=None if days is None else at + timedelta(days=days),
            )

        elif kind == "override":
            reset, override_limit, minutes = argument
            EntitlementOverrideFactory(
                customer=customer,
                feature=feature,
                reset=reset,
                limit=D(override_limit),
                starts_at=at + timedelta(minutes=minutes),
            )

        elif kind == "replay" and recorded:
            how, event_id, quantity = recorded[argument % len(recorded)]
            if how == "consume":
                result = engine.entitlement_consume(
                    customer, feature.key, quantity, event_id, timestamp=at
                )
                assert (result.allowed, result.replayed) == (True, True)
            else:
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
                assert (result.accepted, result.duplicates) == (0, 1)
            assert snapshot(customer, feature) == state_before

        elif kind == "reverse" and recorded:
            how, event_id, quantity = recorded[argument % len(recorded)]
            event = UsageEvent.objects.get(customer=customer, event_id=event_id)
            then = engine.entitlement_check(customer, feature.key, event.timestamp)
            result = engine.usage_reverse(customer, event_id, reason="property", at=at)
            assert result.created == (event_id not in reversed_ids)
            later = engine.entitlement_check(customer, feature.key, event.timestamp)
            if result.created:
                reversed_ids.add(event_id)
                assert later.usage == then.usage - quantity
            else:
                assert snapshot(customer, feature) == state_before

        now = engine.entitlement_check(customer, feature.key, at)
        # The balance is never negative.
        assert now.balance >= 0
        # Usage is the sum of the accepted events of the period, and all of them ever.
        events = UsageEvent.objects.filter(
            customer=customer, timestamp__gte=now.period_start, reversed_at=None
        )
        if now.period_end is not None:  # `never` has no end
            events = events.filter(timestamp__lt=now.period_end)
        in_period = events.aggregate(total=Sum("quantity"))["total"] or D(0)
        assert now.usage == in_period
        # The balance from the ledger: the allowance less what the window's unreversed events
        # took from it (their quantity less what they drew from grants), plus the grants' rest
        # (when every draw of the window went to the counter of the kind in force now).
        draws = UsageDraw.objects.filter(event__in=events).exclude(grant=None)
        if not draws.exclude(window=now.reset).exists():
            from_grants = draws.aggregate(total=Sum("quantity"))["total"] or D(0)
            rest = sum((g.remaining for g in Grant.objects.filter(customer=customer)
                        if in_force(g, at)), D(0))  # fmt: skip
            assert now.balance == max(D(0), now.limit - (in_period - from_grants)) + rest
        assert UsageEvent.objects.filter(customer=customer).count() == len(recorded)
        assert sum(q for _, e, q in recorded if e not in reversed_ids) == sum(
            UsageCounter.objects.filter(
                customer=customer, feature=feature, window=Reset.BILLING_PERIOD
            ).values_list("used", flat=True),
            D(0),
        )
        # What grants gave up is what the periods drew from them (each draw is kept on the
        # counter of the kind in force: an override may reset by day, week, month or never).
        grants = list(Grant.objects.filter(customer=customer))
        grants_agree_with_the_draw_ledger(customer, feature)
        # Burn-down order: a grant drawn now had no sooner-expiring grant in force with units left.
        for grant in grants:
            if grant.consumed > grants_before.get(grant.pk, D(0)):
                for other in grants:
                    if (
                        other.pk != grant.pk
                        and in_force(other, at)
                        and expires_sooner(other, grant)
                    ):
                        assert other.remaining == 0, (other, grant)

    # Every counter is what its window's events add up to.
    report = usage_counters_rebuild(dry_run=True, customers=[customer])
    assert report.drifts == [], [str(drift) for drift in report.drifts]

    # Reversing everything leaves nothing counted and gives every grant in force its units back.
    for _, event_id, _ in recorded:
        engine.usage_reverse(customer, event_id, reason="all of it", at=at)
    assert set(UsageCounter.objects.filter(customer=customer).values_list("used", "drawn")) <= {
        (D(0), D(0))
    }
    for grant in Grant.objects.filter(customer=customer):
        if grant.expires_at is None or at < grant.expires_at:
            assert grant.consumed == 0, grant
    grants_agree_with_the_draw_ledger(customer, feature)
    assert usage_counters_rebuild(dry_run=True, customers=[customer]).drifts == []
