"""Celery tasks of customers: take ids, call one service, safe to run twice.

Names are explicit so that the beat schedules (data migration 0004) match whatever the module
layout becomes. The send tasks are attached to their outboxes below (core.outbox), so the
modules that record rows never import this one.
"""

import datetime as dt
import smtplib

from celery import shared_task

from core.outbox import DATABASE_ERRORS, TASK_RETRIES, send_in_task

from . import checks, engine, notifications, snapshots, webhooks

# What a mail server or network outage raises, and the database going away for a moment:
# retried with backoff (core.outbox.TASK_RETRIES), then the sweep's.
MAIL_ERRORS = (smtplib.SMTPException, OSError, *DATABASE_ERRORS)
WEBHOOK_ERRORS = (webhooks.WebhookDeliveryError, *DATABASE_ERRORS)


@shared_task(
    bind=True,
    name="customers.tasks.notification_send",
    acks_late=True,
    autoretry_for=MAIL_ERRORS,
    **TASK_RETRIES,
)
def notification_send(self, notification_id: int) -> bool:
    """Sends one notification's email (never one already sent)."""
    return send_in_task(
        self,
        lambda: notifications.notification_email_send(notification_id=notification_id),
        MAIL_ERRORS,
        f"Notification {notification_id}",
    )


@shared_task(name="customers.tasks.notifications_sweep")
def notifications_sweep(due_within_seconds: float = 0) -> int:
    """Queues the pending notifications due for another try (a lost task, a broker, mail or
    database outage); `due_within_seconds` also takes those due that much later (tests,
    manual runs). Returns how many were queued."""
    return notifications.OUTBOX.sweep(within=dt.timedelta(seconds=due_within_seconds))


@shared_task(
    bind=True,
    name="customers.tasks.webhook_deliver",
    acks_late=True,
    autoretry_for=WEBHOOK_ERRORS,
    **TASK_RETRIES,
)
def webhook_deliver(self, delivery_id: int) -> bool:
    """POSTs one webhook delivery (never one already delivered)."""
    return send_in_task(
        self,
        lambda: webhooks.webhook_delivery_send(delivery_id=delivery_id),
        WEBHOOK_ERRORS,
        f"Webhook delivery {delivery_id}",
    )


@shared_task(name="customers.tasks.webhook_deliveries_sweep")
def webhook_deliveries_sweep(due_within_seconds: float = 0) -> int:
    """Queues the pending webhook deliveries due for another try. Returns how many."""
    return webhooks.OUTBOX.sweep(within=dt.timedelta(seconds=due_within_seconds))


@shared_task(name="customers.tasks.snapshots_settle")
def snapshots_settle() -> int:
    """Voids the Redis snapshots that writes Redis did not hear of stand for (a backstop: web
    processes settle at their start and after a Redis failure). Returns how many debts."""
    return snapshots.settle()


@shared_task(name="customers.tasks.usage_counters_vacuum")
def usage_counters_vacuum() -> bool:
    """VACUUM of the usage counters when PostgreSQL runs without autovacuum (every minute;
    customers/checks.py says why). Answers whether it ran."""
    return checks.usage_counters_vacuum()


@shared_task(name="customers.tasks.reservations_expire")
def reservations_expire() -> int:
    """Marks the holds past their expiry `expired` (tidiness: they count for nothing already).
    Returns how many."""
    return engine.reservations_expire()


notifications.OUTBOX.task = notification_send
webhooks.OUTBOX.task = webhook_deliver
