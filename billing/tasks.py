"""Celery tasks of billing: take ids, call one service, safe to run twice. Beat runs
`close_periods` (every 15 minutes), `payments_collect` (every 15 minutes: the retries of
declined charges) and `invoice_emails_sweep` (every minute); the `close_periods` and
`collect_payments` commands do the same without Celery."""

import datetime as dt
import logging

from celery import shared_task

from customers.tasks import MAIL_ERRORS, QUICK_RETRIES, enqueue

from .services.emails import invoice_email_send as email_send
from .services.emails import invoice_emails_due
from .services.payments import payments_collect as collect
from .services.period_close import periods_close

logger = logging.getLogger(__name__)


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
    **QUICK_RETRIES,
)
def invoice_email_send(self, email_id: int) -> bool:
    """Sends one receipt or payment notice (never one already sent)."""
    try:
        return email_send(email_id=email_id)
    except MAIL_ERRORS:
        if self.request.is_eager:
            logger.warning("Invoice email %s not sent; left pending", email_id, exc_info=True)
            return False
        raise


@shared_task(name="billing.tasks.invoice_emails_sweep")
def invoice_emails_sweep(due_within_seconds: float = 0) -> int:
    """Queues the pending invoice emails due for another try. Returns how many."""
    queued = 0
    for pk in invoice_emails_due(within=dt.timedelta(seconds=due_within_seconds)):
        if not enqueue(invoice_email_send, pk):
            break  # the broker is down: the next sweep tries again
        queued += 1
    return queued
