"""The outbox: one delivery loop for every message the platform sends after a change commits
(alert emails, webhook deliveries, and any later kind).

A message is a row written in the transaction that makes the change, with the fields
`status` (pending | <done> | failed), `attempts`, `last_attempt_at`, `next_attempt_at`,
`last_error`, `created_at` and a "done at" stamp. When the transaction commits, a Celery task
is queued with the row's id (`Outbox.queue`); a periodic sweep (`Outbox.sweep`) queues again
the rows still pending past `next_attempt_at` (a lost task, a broker, mail server or database
outage), with backoff (`retry_at`).

Sending one row (`Outbox.send`):
1. Claim: in a short transaction of its own, the pending row is locked (SKIP LOCKED),
   `attempts` counted and `next_attempt_at` moved one sweep delay ahead; committed before
   anything is sent, so every try counts, even one whose process dies inside the send.
2. Send: in a second transaction the row is locked again (SKIP LOCKED: a worker already
   sending it wins, and a worker that dies releases it with its connection), still pending,
   and delivered; then marked done, or its error and next try recorded, in that transaction.

What "sent once" means: a row marked done is never sent again, and no two workers send one row
at the same time. A worker that dies (or loses its database) after the receiver accepted the
message but before "done" commits leaves the row pending: it is sent again, with the same
identity (an email's Message-ID derived from the row, `message_id`; a webhook's event id), so
the receiver can drop the duplicate. Delivery is at least once; with that identity, at most
once for a receiver that deduplicates.

Task failures: the tasks retry mail and network errors and database errors (`DATABASE_ERRORS`)
quickly with backoff (`TASK_RETRIES`); a longer outage is the sweep's. Imports no domain app.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.db import InterfaceError, OperationalError, models, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

logger = logging.getLogger(__name__)

PENDING, FAILED = "pending", "failed"
# A database that went away for a moment (a restart, a dropped connection): retried.
DATABASE_ERRORS = (OperationalError, InterfaceError)
# A task's own retries ride out a blip: exponential, at most 10, 20, 40 s (full jitter), all
# within the sweep's delay. A longer outage is the sweep's, with its own backoff (`retry_at`),
# so that retries never pile up.
TASK_RETRIES = {
    "retry_backoff": 10,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 3,
}


class Undeliverable(Exception):
    """The message can never be delivered (no recipient, a deactivated endpoint): the row is
    marked failed at once, its message kept as the error."""


class DeliveryFailed(Exception):
    """The receiver refused or could not be reached. Its message is recorded as the error as
    it is; `fields`: more values to record (e.g. the response code). Retried."""

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.fields = fields


def retry_at(*, attempts: int, now: dt.datetime, delay: dt.timedelta) -> dt.datetime:
    """When a row that failed `attempts` times is due for the sweep again: `delay` after the
    last try, doubling every 4 tries (one task and its own quick retries), at most an hour
    apart. The task's own retries come sooner than `delay`, so the two never overlap."""
    return now + min(delay * 2 ** min(attempts // 4, 8), dt.timedelta(hours=1))


def message_id(kind: str, pk: int, created_at: dt.datetime) -> str:
    """A Message-ID that is the same at every try of one row (RFC 5322 `<left@right>`), on
    the site's host name: a receiver that sees it twice drops the second."""
    host = urlsplit(settings.SITE_URL).hostname or "localhost"
    return f"<{kind}.{pk}.{int(created_at.timestamp())}@{host}>"


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


def send_in_task(task, send: Callable[[], bool], errors: tuple, what: str) -> bool:
    """Runs a send task's body `send()`: a transport or database error propagates, so that
    Celery retries it (`autoretry_for=errors`), except in-process (no broker), where a retry
    would run at once and hold the request: the row is left pending for the sweep or a
    manual resend, and the error logged. `what` names the row in the log."""
    try:
        return send()
    except errors:
        if task.request.is_eager:
            logger.warning("%s not sent; left pending", what, exc_info=True)
            return False
        raise


@dataclass
class Outbox:
    """The delivery loop of one kind of row. `task`, the Celery task that sends one row by id,
    is attached by the app's tasks module (`Outbox.task = ...`), so that the module that
    records rows never imports its tasks."""

    model: type[models.Model]
    done: str  # the status of a row sent ("sent", "delivered")
    done_at: str  # the field stamped when it is sent
    sweep_delay: Callable[[], dt.timedelta]
    give_up_after: Callable[[], dt.timedelta]
    related: tuple[str, ...] = ()
    task: object = None

    def queue(self, ids) -> None:
        """Queues the send of each row (call on commit); stops at the first broker failure:
        the sweep queues the rest."""
        for pk in ids:
            if not enqueue(self.task, pk):
                break

    def queue_on_commit(self, ids) -> None:
        ids = list(ids)
        transaction.on_commit(lambda: self.queue(ids))

    def send(self, pk: int, deliver: Callable[[models.Model], dict | None]) -> bool:
        """Sends one pending row by `deliver(row)`, which answers the fields to record on
        success, or raises Undeliverable, DeliveryFailed or any error of the transport.
        Returns True if it was sent now; False if there was nothing to do (sent, failed, or
        being sent by another worker). A failure is recorded, then re-raised (the task
        retries). See the module's docstring for the claim and what "sent once" means."""
        if not self._claim(pk):
            return False
        error = None
        with transaction.atomic():
            row = (
                self.model.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related(*self.related)
                .filter(pk=pk, status=PENDING)
                .first()
            )
            if row is None:
                return False
            now = row.last_attempt_at  # this try's, as claimed: the backoff counts from it
            fields: dict = {}
            try:
                fields = deliver(row) or {}
            except Undeliverable as exc:
                row.status, row.last_error = FAILED, str(exc)
            except Exception as exc:
                error = exc
                fields = getattr(exc, "fields", {})
                text = (
                    str(exc) if isinstance(exc, DeliveryFailed) else f"{type(exc).__name__}: {exc}"
                )
                row.last_error = text[:2000]
                row.next_attempt_at = retry_at(
                    attempts=row.attempts, now=now, delay=self.sweep_delay()
                )
                if now - row.created_at >= self.give_up_after():
                    row.status = FAILED
            else:
                row.status, row.last_error = self.done, ""
                setattr(row, self.done_at, timezone.now())
            for name, value in fields.items():
                setattr(row, name, value)
            row.save(
                update_fields=["status", "last_error", "next_attempt_at", self.done_at, *fields]
            )
        if error is not None:
            raise error
        return row.status == self.done

    def _claim(self, pk: int) -> bool:
        """Counts the attempt in a transaction of its own, committed before anything is sent
        (a try whose process dies inside the send still counts), and moves the sweep's next
        look one delay ahead. False when the row is not pending or another worker holds it."""
        now = timezone.now()
        with transaction.atomic():
            claimed = (
                self.model.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(pk=pk, status=PENDING)
                .values_list("pk", flat=True)
                .first()
            )
            if claimed is None:
                return False
            self.model.objects.filter(pk=pk).update(
                attempts=F("attempts") + 1,
                last_attempt_at=now,
                next_attempt_at=now + self.sweep_delay(),
            )
        return True

    def due(self, *, within: dt.timedelta = dt.timedelta(0), limit: int = 500) -> list[int]:
        """Ids of pending rows due for another try (`within` from now): their task was lost,
        or failed `sweep_delay()` or more ago (with backoff: `retry_at`)."""
        due = timezone.now() + within
        return list(
            self.model.objects.filter(status=PENDING, next_attempt_at__lte=due)
            .order_by("next_attempt_at", "pk")
            .values_list("pk", flat=True)[:limit]
        )

    def sweep(self, *, within: dt.timedelta = dt.timedelta(0)) -> int:
        """Queues the rows due (`due`); stops when the broker is down (the next sweep tries
        again). Returns how many were queued."""
        queued = 0
        for pk in self.due(within=within):
            if not enqueue(self.task, pk):
                break
            queued += 1
        return queued

    def again(self, rows: QuerySet) -> int:
        """Pending or failed rows back to pending and queued on commit (the admin's "resend"
        and "retry"). Rows already sent are left alone. Returns how many."""
        with transaction.atomic():
            ids = list(rows.filter(status__in=[PENDING, FAILED]).values_list("pk", flat=True))
            self.model.objects.filter(pk__in=ids).update(
                status=PENDING, next_attempt_at=timezone.now()
            )
            self.queue_on_commit(ids)
        return len(ids)
