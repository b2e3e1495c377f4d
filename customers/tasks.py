"""Celery tasks of customers: take ids, call one service, safe to run twice.

Names are explicit so that the beat schedules (data migration 0004) match whatever the module
layout becomes.
"""

import datetime as dt
import logging
import smtplib

from celery import shared_task

from . import notifications, snapshots, webhooks

logger = logging.getLogger(__name__)

# What a mail server or network outage raises; these are retried with backoff.
MAIL_ERRORS = (smtplib.SMTPException, OSError)
# A task's own retries ride out a blip: exponential, at most 10, 20, 40 s (full jitter), all
# within the sweep's delay. A longer outage is the sweep's, with its own backoff
# (webhooks.retry_at), so that retries never pile up.
QUICK_RETRIES = {
    "retry_backoff": 10,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 3,
}


def enqueue(task, *args) -> bool:
    """Queues `task(*args)`; False, logged, when the broker cannot be reached.

    Never raises: the outbox row stays pending and a sweep queues it later, so a broker outage
    never fails the request that recorded it."""
    try:
        task.apply_async(args=args)
    except Exception:
        logger.warning(
            "Could not queue %s%r; the sweep will queue it", task.name, args, exc_info=True
        )
        return False
    return True


@shared_task(
    bind=True,
    name="customers.tasks.notification_send",
    acks_late=True,
    autoretry_for=MAIL_ERRORS,
    **QUICK_RETRIES,
)
def notification_send(self, notification_id: int) -> bool:
    """Sends one notification's email (never one already sent)."""
    try:
        return notifications.notification_email_send(notification_id=notification_id)
    except MAIL_ERRORS:
        if self.request.is_eager:
            # In-process (no broker) a retry would run at once and hold the request: leave the
            # notification pending for the sweep or the admin's resend.
            logger.warning("Notification %s not sent; left pending", notification_id, exc_info=True)
            return False
        raise


@shared_task(name="customers.tasks.notifications_sweep")
def notifications_sweep(due_within_seconds: float = 0) -> int:
    """Queues the pending notifications due for another try (a lost task, a broker or mail
    outage); `due_within_seconds` also takes those due that much later (tests, manual runs).
    Returns how many were queued."""
    queued = 0
    within = dt.timedelta(seconds=due_within_seconds)
    for pk in notifications.notifications_due(within=within):
        if not enqueue(notification_send, pk):
            break  # the broker is down: the next sweep tries again
        queued += 1
    return queued


@shared_task(
    bind=True,
    name="customers.tasks.webhook_deliver",
    acks_late=True,
    autoretry_for=(webhooks.WebhookDeliveryError,),
    **QUICK_RETRIES,
)
def webhook_deliver(self, delivery_id: int) -> bool:
    """POSTs one webhook delivery (never one already delivered)."""
    try:
        return webhooks.webhook_delivery_send(delivery_id=delivery_id)
    except webhooks.WebhookDeliveryError:
        if self.request.is_eager:
            logger.warning("Webhook delivery %s failed; left pending", delivery_id, exc_info=True)
            return False
        raise


@shared_task(name="customers.tasks.webhook_deliveries_sweep")
def webhook_deliveries_sweep(due_within_seconds: float = 0) -> int:
    """Queues the pending webhook deliveries due for another try. Returns how many."""
    queued = 0
    within = dt.timedelta(seconds=due_within_seconds)
    for pk in webhooks.deliveries_due(within=within):
        if not enqueue(webhook_deliver, pk):
            break
        queued += 1
    return queued


@shared_task(name="customers.tasks.snapshots_settle")
def snapshots_settle() -> int:
    """Voids the Redis snapshots that writes Redis did not hear of stand for (a backstop: web
    processes settle at their start and after a Redis failure). Returns how many debts."""
    return snapshots.settle()
