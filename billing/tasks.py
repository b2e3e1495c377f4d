"""Celery tasks of billing. Celery beat runs `billing.tasks.close_periods` (the schedule is wired
elsewhere); the `close_periods` command does the same without Celery."""

from celery import shared_task

from .services.period_close import periods_close


@shared_task(name="billing.tasks.close_periods")
def close_periods() -> dict:
    """Closes every ended billing period; safe to run twice (see period_close.periods_close)."""
    return periods_close().as_dict()
