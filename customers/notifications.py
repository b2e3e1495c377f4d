"""Threshold notifications (DESIGN.md "Notifications"): the outbox row written in the usage
transaction, the email, and sending it.

The engine calls `thresholds_record` inside every usage transaction. When usage crosses a
`notify_at` threshold it inserts one `Notification` (the unique constraint makes it one per
customer, feature, period and threshold, whatever the concurrency) and one webhook delivery per
subscribed endpoint, and queues the sends when the transaction commits. If the broker is down
the rows stay pending and `notifications_sweep` queues them later; a notification marked sent is
never sent again.
"""

import datetime as dt
import logging
from decimal import Decimal
from functools import partial

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format

from catalog.models import Enforcement
from catalog.selectors import topup_packs_available
from core.api import decimal_str, time_str
from core.outbox import Outbox, Undeliverable, message_id
from core.text import money_round, money_text, quantity_text

from . import engine, services, webhooks
from .engine import arithmetic
from .models import Customer, Notification, NotificationStatus, Subscription

logger = logging.getLogger(__name__)

ZERO = Decimal("0")


def sweep_delay() -> dt.timedelta:
    """How long a notification may stay pending before the sweep queues it again."""
    return dt.timedelta(seconds=settings.NOTIFICATION_SWEEP_DELAY_SECONDS)


def give_up_after() -> dt.timedelta:
    """A notification still failing this long after the crossing is marked failed (a day); the
    admin can resend it."""
    return dt.timedelta(seconds=settings.NOTIFICATION_GIVE_UP_AFTER_SECONDS)


# --- recording ----------------------------------------------------------------------------


def thresholds_record(*, customer: Customer, feature, before, after) -> Notification | None:
    """Called by the engine inside the usage transaction, with the entitlement before and after
    the usage. Records the highest threshold crossed (several at once send one email) unless
    this customer, feature, period and threshold already has one, plus its webhook event, and
    queues the sends on commit. Returns the new Notification, or None.

    Insert-or-nothing under a savepoint: a concurrent transaction recording the same
    threshold makes this insert wait, then fail on the unique constraint, and it is dropped."""
    crossed = arithmetic.thresholds_crossed(before, after)
    if not crossed:
        return None
    now = timezone.now()
    notification = Notification(
        customer=customer,
        feature=feature,
        period_start=after.period_start,
        threshold=max(crossed),
        to=customer.alert_recipients,
        usage=after.usage,
        limit=after.limit,
        capacity=arithmetic.capacity(after),
        balance=after.balance,
        unit=after.unit or "",
        resets_at=after.resets_at,
        created_at=now,
        # The task queued on commit goes first; the sweep only if it got lost.
        next_attempt_at=now + sweep_delay(),
    )
    try:
        with transaction.atomic():
            notification.save(force_insert=True)
    except IntegrityError:
        return None  # this threshold was already recorded in this period
    webhooks.event_record(
        webhooks.THRESHOLD_CROSSED, partial(threshold_event_data, notification, after)
    )
    OUTBOX.queue_on_commit([notification.pk])
    return notification


def threshold_event_data(notification: Notification, entitlement) -> dict:
    """The `data` of a `usage.threshold_crossed` webhook event."""
    return {
        "customer": notification.customer.external_id,
        "feature": notification.feature.key,
        "threshold": notification.threshold,
        "percent_used": decimal_str(entitlement.percent_used.quantize(Decimal("0.01"))),
        "usage": decimal_str(notification.usage),
        "limit": decimal_str(notification.limit),
        "granted": decimal_str(entitlement.granted),
        "capacity": decimal_str(notification.capacity),
        "balance": decimal_str(notification.balance),
        "unit": notification.unit,
        "period_start": time_str(notification.period_start),
        "resets_at": time_str(notification.resets_at),
        "notification_id": notification.pk,
    }


# --- the email ----------------------------------------------------------------------------


def _pack_offered(customer: Customer, subscription: Subscription | None, feature) -> bool:
    """Whether the dashboard's top-up page for `feature` has a pack this customer may buy: the
    same filter as dashboard.selectors.topup_packs_for (active, on their plan or on every plan,
    in their currency), so the email never offers a purchase the page then refuses."""
    if subscription is None:
        return False
    packs = topup_packs_available(plan=subscription.plan, feature=feature)
    return packs.filter(price_currency=customer.currency).exists()


def _headline(n: Notification, percent: int, terms, over: Decimal) -> str:
    name = n.feature.name
    if n.threshold < 100:
        return f"You have used {n.threshold}% of your {name}."
    headline = f"You have used all of your {name} ({percent}%)."
    if terms.enforcement == Enforcement.SOFT:
        if terms.overage_price is None:
            return f"{headline} Use beyond it is not blocked."
        price = money_text(terms.overage_price)
        return f"{headline} Use beyond it is billed at {price} per {n.unit or 'unit'}."
    if over > 0:
        return f"{headline} Usage past it was recorded, and more is blocked."
    if n.feature.aggregation == "latest":
        # A level (storage in use) does not reset: it goes down when they use less.
        return f"{headline} More is blocked until you use less, buy more or upgrade."
    if n.resets_at:
        return f"{headline} More is blocked until it resets on {_date_text(n.resets_at)}."
    return f"{headline} More is blocked."


def _date_text(at: dt.datetime) -> str:
    return date_format(at.astimezone(dt.UTC), "j F Y, H:i") + " UTC"


def notification_email_context(notification: Notification) -> dict:
    """What the alert email says. The figures are the row's, taken when usage crossed the
    threshold (usage, allowance, capacity = allowance plus grants, percent of capacity,
    overage); the enforcement, overage price and offers are those in force when it is sent.
    Every link is absolute on `settings.SITE_URL` as configured at send time, and names a
    dashboard page that opens for this customer (through the login when signed out)."""
    n = notification
    customer, feature, unit = n.customer, n.feature, n.unit
    usage, capacity = n.usage, n.capacity
    allowance = n.limit if n.limit is not None else capacity
    # A crossing at zero capacity only happens when nothing is left: 100%.
    percent = int(arithmetic.percent_of(usage, capacity, blocked=True))  # down, as the dashboard
    over = arithmetic.overage_of(usage, capacity)
    left = n.balance if n.balance is not None else max(ZERO, capacity - usage)
    terms = engine.entitlement_check(customer, feature)
    subscription = services.subscription_active(customer)

    overage_price = overage_cost = None
    if over > 0 and terms.enforcement == Enforcement.SOFT and terms.overage_price is not None:
        price = terms.overage_price
        overage_price = money_text(price)
        overage_cost = money_text(money_round(over * price.amount, price.currency))

    site = settings.SITE_URL.rstrip("/")

    def link(name: str, *args) -> str:
        return site + reverse(name, args=args)

    return {
        "customer_name": customer.name,
        "feature_name": feature.name,
        "threshold": n.threshold,
        "headline": _headline(n, percent, terms, over),
        "percent": percent,
        "used": quantity_text(usage, unit),
        "capacity": quantity_text(capacity, unit),
        "allowance": quantity_text(allowance, unit),
        "grants": quantity_text(capacity - allowance, unit) if capacity > allowance else "",
        "over": quantity_text(over, unit) if over > 0 else "",
        "unit_name": unit or "unit",
        "overage_price": overage_price,
        "overage_cost": overage_cost,
        "left": quantity_text(left, unit),
        "resets_at": _date_text(n.resets_at) if n.resets_at else None,
        "usage_url": link("dashboard:overview") + f"#usage-{feature.key}",
        "topup_url": (
            link("dashboard:topup_packs", feature.key)
            if _pack_offered(customer, subscription, feature)
            else None
        ),
        "plans_url": link("dashboard:plans") if subscription is not None else None,
    }


def notification_email(notification: Notification, recipients: list[str]) -> EmailMultiAlternatives:
    context = notification_email_context(notification)
    subject = f"You have used {notification.threshold}% of your {notification.feature.name}"
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("customers/email/threshold.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        headers={
            "X-Entitlements-Notification": str(notification.pk),
            # The same at every try: a receiver drops a resend after a crash (core.outbox).
            "Message-ID": message_id("notification", notification.pk, notification.created_at),
        },
    )
    message.attach_alternative(
        render_to_string("customers/email/threshold.html", context), "text/html"
    )
    return message


# --- sending ------------------------------------------------------------------------------

# Alert emails go through the outbox (core.outbox: the claim, the retries, what "sent once"
# means); tasks.py attaches the task that sends one.
OUTBOX = Outbox(
    model=Notification,
    done=NotificationStatus.SENT,
    done_at="sent_at",
    sweep_delay=sweep_delay,
    give_up_after=give_up_after,
    related=("customer", "feature"),
)


def notification_email_send(*, notification_id: int) -> bool:
    """Sends one notification's email if it is still pending; True if sent now.

    The outbox's loop (core.outbox): the attempt is counted before the send, the row is locked
    during it (another worker skips it) and marked sent in the same transaction; the email's
    Message-ID is derived from the row, so a resend after a crash is recognisable. A failure
    keeps the error in `last_error` and leaves the row pending (the task's quick retries, then
    the sweep with backoff) or, `give_up_after()` the crossing, marks it failed; then
    re-raises the error."""
    return OUTBOX.send(notification_id, _email_deliver)


def _email_deliver(notification: Notification) -> dict:
    recipients = notification.to or notification.customer.alert_recipients
    if not recipients:
        raise Undeliverable("No recipient: the customer has no email address.")
    notification_email(notification, recipients).send()
    return {"to": recipients}


def notifications_due(*, within: dt.timedelta = dt.timedelta(0), limit: int = 500) -> list[int]:
    """Ids of pending notifications due for another try (core.outbox: `Outbox.due`)."""
    return OUTBOX.due(within=within, limit=limit)


def notifications_resend(*, notifications: QuerySet) -> int:
    """Pending or failed notifications back to pending and queued on commit (the admin's
    "resend"). Sent ones are left alone. Returns how many."""
    return OUTBOX.again(notifications)
