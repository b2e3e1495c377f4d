"""Everything that writes customers, subscriptions, overrides and grants. Billing wraps the
subscription services with invoices; customers never imports billing."""

import datetime as dt
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from simple_history.utils import bulk_update_with_history

from catalog.models import Feature, Plan, PlanStatus, PlanVersion, TopUpExpiry, TopUpPack
from catalog.selectors import plan_version_current
from catalog.services import version_next
from core.errors import Conflict, InvalidInput

from . import snapshots
from .models import (
    SUBSCRIPTION_CURRENT,
    Customer,
    CustomerUser,
    EntitlementOverride,
    Grant,
    GrantSource,
    Subscription,
    SubscriptionStatus,
)
from .periods import add_months, interval_months


def customer_version_bump(customer_id: int) -> None:
    """Marks the engine's cached state of this customer out of date (in the caller's
    transaction: the new version and the change become visible together)."""
    customers_version_bump([customer_id])


def customers_version_bump(customer_ids: list[int]) -> None:
    Customer.objects.filter(pk__in=customer_ids).update(state_version=version_next("state_version"))
    snapshots.changed(customer_ids)


@transaction.atomic
def customer_create(**fields: Any) -> Customer:
    customer = Customer(**fields)
    customer.full_clean()
    customer.save()
    return customer


@transaction.atomic
def customer_update(*, customer: Customer, **fields: Any) -> Customer:
    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    if "external_id" in fields and fields["external_id"] != customer.external_id:
        raise ValidationError({"external_id": "A customer's external id cannot change."})
    currency_changes = "currency" in fields and fields["currency"] != customer.currency
    if currency_changes and customer.subscriptions.exists():
        raise ValidationError(
            {"currency": "A customer is billed in one currency; it cannot change."}
        )
    for name, value in fields.items():
        setattr(customer, name, value)
    customer.full_clean()
    customer.save()
    return customer


@transaction.atomic
def customer_user_link(*, user, customer: Customer) -> CustomerUser:
    link, _ = CustomerUser.objects.update_or_create(user=user, defaults={"customer": customer})
    return link


def subscription_active(customer: Customer) -> Subscription | None:
    """The customer's current subscription (active or past due), or None."""
    return (
        Subscription.objects.filter(customer=customer, status__in=SUBSCRIPTION_CURRENT)
        .select_related("plan", "scheduled_plan")
        .first()
    )


@transaction.atomic
def subscription_start(
    *, customer: Customer, plan: Plan, started_at: dt.datetime | None = None
) -> Subscription:
    """Starts the customer's one active subscription; its first period begins now. Raises
    Conflict if one is active, InvalidInput for a plan not active or in another currency.
    (billing.services.subscriptions.subscription_create wraps this and invoices the first
    period.)"""
    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    _check_plan_for(customer, plan)
    if subscription_active(customer):
        raise Conflict("This customer already has an active subscription.", code="subscribed")
    started_at = started_at or timezone.now()
    subscription = Subscription(
        customer=customer,
        plan=plan,
        plan_version=_version_for_new(plan),
        started_at=started_at,
        current_period_start=started_at,
        current_period_end=add_months(started_at, interval_months(plan.interval)),
    )
    subscription.full_clean()
    try:
        with transaction.atomic():
            subscription.save()
    except IntegrityError:
        raise Conflict(
            "This customer already has an active subscription.", code="subscribed"
        ) from None
    return subscription


def _version_for_new(plan: Plan) -> PlanVersion:
    """The version a subscriber joining `plan` now gets: the published one."""
    version = plan_version_current(plan=plan)
    if version is None:
        raise InvalidInput(f"The plan {plan.key!r} has no published version.", code="no_version")
    return version


def _check_active(subscription: Subscription) -> None:
    if subscription.status not in SUBSCRIPTION_CURRENT:
        raise InvalidInput("This subscription has ended.", code="subscription_ended")


def _check_plan_for(customer: Customer, plan: Plan) -> None:
    if plan.status != PlanStatus.ACTIVE:
        raise InvalidInput(f"The plan {plan.key!r} is not active.", code="plan_not_active")
    if str(plan.price.currency) != customer.currency:
        raise InvalidInput(
            f"The plan {plan.key!r} is priced in {plan.price.currency}; "
            f"this customer is billed in {customer.currency}.",
            code="currency_mismatch",
        )


@transaction.atomic
def subscription_set_plan(
    *, subscription: Subscription, plan: Plan, period_start=None, period_end=None
) -> Subscription:
    """Moves a subscription to `plan` at once (an upgrade), optionally with a new period.
    Usage so far counts against the new limits (counters belong to the customer, not the plan).
    Billing decides when to call this and invoices the proration."""
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    _check_active(subscription)
    _check_plan_for(subscription.customer, plan)
    subscription.plan = plan
    subscription.plan_version = _version_for_new(plan)
    subscription.scheduled_plan = None
    if period_start and period_end:
        subscription.current_period_start = period_start
        subscription.current_period_end = period_end
    subscription.full_clean()
    subscription.save()
    return subscription


@transaction.atomic
def subscription_schedule_plan(*, subscription: Subscription, plan: Plan | None) -> Subscription:
    """A downgrade waits for the period end; None clears a scheduled change."""
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    _check_active(subscription)
    if plan is not None:
        _check_plan_for(subscription.customer, plan)
    subscription.scheduled_plan = plan
    subscription.save(update_fields=["scheduled_plan", "updated_at"])
    return subscription


@transaction.atomic
def subscription_cancel(*, subscription: Subscription, at_period_end: bool = True) -> Subscription:
    """Cancels at the period end (the default), or at once."""
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    if at_period_end:
        subscription.cancel_at_period_end = True
        subscription.save(update_fields=["cancel_at_period_end", "updated_at"])
    else:
        subscription.status = SubscriptionStatus.CANCELED
        subscription.ended_at = timezone.now()
        subscription.save(update_fields=["status", "ended_at", "updated_at"])
    return subscription


@transaction.atomic
def subscription_payment_standing(*, subscription: Subscription, past_due: bool) -> Subscription:
    """Marks a current subscription past due (an invoice unpaid past the grace period) or back
    to active (paid up). Billing decides when; the engine reads the status (see
    `engine.state.subscription_access_denial`). Locks the subscription; an ended one is left
    alone."""
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    status = SubscriptionStatus.PAST_DUE if past_due else SubscriptionStatus.ACTIVE
    if subscription.status in SUBSCRIPTION_CURRENT and subscription.status != status:
        subscription.status = status
        subscription.save(update_fields=["status", "updated_at"])
    return subscription


@transaction.atomic
def subscription_resume(*, subscription: Subscription) -> Subscription:
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    subscription.cancel_at_period_end = False
    subscription.save(update_fields=["cancel_at_period_end", "updated_at"])
    return subscription


@transaction.atomic
def subscription_roll_period(*, subscription: Subscription, plan: Plan | None = None):
    """Ends the current period: the next one starts at its end, keeping the anchor day; a
    subscription set to cancel ends instead. Returns the subscription (locked, updated)."""
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    if subscription.cancel_at_period_end:
        subscription.status = SubscriptionStatus.CANCELED
        subscription.ended_at = subscription.current_period_end
        subscription.save()
        return subscription
    plan = plan or subscription.scheduled_plan  # a downgrade waiting for this period end
    if plan is not None:
        subscription.plan = plan
        subscription.plan_version = _version_for_new(plan)
    subscription.scheduled_plan = None
    start = subscription.current_period_end
    step = interval_months(subscription.plan.interval)
    # Count periods from the anchor so that a clamped month end comes back (Jan 31 -> Mar 31).
    n = 1
    while add_months(subscription.started_at, n * step) <= start:
        n += 1
    subscription.current_period_start = start
    subscription.current_period_end = add_months(subscription.started_at, n * step)
    subscription.full_clean()
    subscription.save()
    return subscription


@transaction.atomic
def subscription_version_move(*, subscription: Subscription) -> Subscription:
    """Moves one active subscription to its plan's published version at once (support, for a
    grandfathered customer). Its entitlements change now; its price from its next period,
    like every price change. Recorded in the subscription's history. Raises InvalidInput
    `same_version` when it is already on it."""
    subscription = (
        Subscription.objects.select_for_update().select_related("plan").get(pk=subscription.pk)
    )
    _check_active(subscription)
    version = _version_for_new(subscription.plan)
    if subscription.plan_version_id == version.pk:
        raise InvalidInput(
            f"This customer is already on version {version.number}.", code="same_version"
        )
    subscription.plan_version = version
    subscription.save(update_fields=["plan_version", "updated_at"])
    return subscription


@transaction.atomic
def subscriptions_version_migrate(*, version: PlanVersion) -> int:
    """Moves every current subscription (active or past due) of `version.plan` to `version` at
    once: their
    entitlements change now, their prices from their next period. Locks the subscriptions in
    id order; one history row each (who and when); the engine's cached states of those
    customers are out of date from the commit. Answers how many moved."""
    moving = list(
        Subscription.objects.select_for_update()
        .filter(plan_id=version.plan_id, status__in=SUBSCRIPTION_CURRENT)
        .exclude(plan_version=version)
        .order_by("pk")
    )
    now = timezone.now()
    for subscription in moving:
        subscription.plan_version = version
        subscription.updated_at = now
    bulk_update_with_history(moving, Subscription, ["plan_version", "updated_at"], batch_size=500)
    customers_version_bump([s.customer_id for s in moving])
    return len(moving)


@transaction.atomic
def override_create(
    *, customer: Customer, feature: Feature, reason: str, created_by=None, **values: Any
) -> EntitlementOverride:
    """Replaces the plan's values of `feature` for this customer (optionally within
    starts_at/ends_at). Validated by the feature's kind; recorded in history."""
    override = EntitlementOverride(
        customer=customer, feature=feature, reason=reason, created_by=created_by, **values
    )
    override.full_clean()
    override.save()
    return override


@transaction.atomic
def override_end(*, override: EntitlementOverride, at: dt.datetime | None = None):
    """Ends an override now (or at `at`); the plan's values apply again from then."""
    override = EntitlementOverride.objects.select_for_update().get(pk=override.pk)
    at = at or timezone.now()
    if override.ends_at is not None and override.ends_at <= at:
        raise InvalidInput("This override has already ended.", code="override_ended")
    if override.starts_at and override.starts_at >= at:
        override.delete()  # never took effect
        return None
    override.ends_at = at
    override.save(update_fields=["ends_at", "updated_at"])
    return override


def grant_expiry_for(pack: TopUpPack, *, at: dt.datetime, period_end: dt.datetime | None):
    if pack.expiry == TopUpExpiry.NEVER:
        return None
    if pack.expiry == TopUpExpiry.DAYS:
        return at + dt.timedelta(days=pack.expiry_days)
    return period_end


@transaction.atomic
def grant_create(
    *,
    customer: Customer,
    feature: Feature,
    quantity: Decimal,
    source: str = GrantSource.MANUAL,
    reason: str = "",
    effective_at: dt.datetime | None = None,
    expires_at: dt.datetime | None = None,
    topup_pack: TopUpPack | None = None,
    created_by=None,
) -> Grant:
    """Grants extra units of a metered feature (used after the period allowance)."""
    grant = Grant(
        customer=customer,
        feature=feature,
        quantity=quantity,
        source=source,
        reason=reason,
        effective_at=effective_at or timezone.now(),
        expires_at=expires_at,
        topup_pack=topup_pack,
        created_by=created_by,
    )
    grant.full_clean()
    grant.save()
    return grant


@transaction.atomic
def grant_void(*, grant: Grant, at: dt.datetime | None = None) -> Grant:
    """Voids a grant from now: its unused units are gone; what it covered stays covered."""
    grant = Grant.objects.select_for_update().get(pk=grant.pk)
    if grant.voided_at is not None:
        raise InvalidInput("This grant is already void.", code="grant_void")
    grant.voided_at = at or timezone.now()
    grant.save(update_fields=["voided_at"])
    return grant
