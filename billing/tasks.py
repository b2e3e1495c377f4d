"""Celery tasks of billing: take ids, call one service, safe to run twice. Beat runs
`close_periods` (every 15 minutes), `payments_collect` (every 15 minutes: the retries of
declined charges) and `invoice_emails_sweep` (every minute); the `close_periods` and
`collect_payments` commands do the same without Celery."""

import datetime as dt

from celery import shared_task

from core.outbox import TASK_RETRIES, send_in_task
from customers.tasks import MAIL_ERRORS

from .services import emails
from .services.payments import payments_collect as collect
from .services.period_close import periods_close


@shared_task(name="billing.tasks.close_periods")
def close_periods() -> dict:
    """Closes every ended billing period; safe to run twice (see period_close.periods_close)."""
    return periods_close().as_dict()


@shared_task(name="billing.tasks.payments_collect")
def payments_collect() -> dict:
    """Retries the declined charges that are due and marks overdue subscriptions past due."""
    return collect().as_dict()


@shared_task(
    bind=True,
    name="billing.tasks.invoice_email_send",
    acks_late=True,
    autoretry_for=MAIL_ERRORS,
    **TASK_RETRIES,
)
def invoice_email_send(self, email_id: int) -> bool:
    """Sends one receipt or payment notice (never one already sent)."""
    return send_in_task(
        self,
        lambda: emails.invoice_email_send(email_id=email_id),
        MAIL_ERRORS,
        f"Invoice email {email_id}",
    )


@shared_task(name="billing.tasks.invoice_emails_sweep")
def invoice_emails_sweep(due_within_seconds: float = 0) -> int:
    """Queues the pending invoice emails due for another try. Returns how many."""
    return emails.OUTBOX.sweep(within=dt.timedelta(seconds=due_within_seconds))


emails.OUTBOX.task = invoice_email_send
