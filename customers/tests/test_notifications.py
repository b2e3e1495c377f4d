"""Threshold notifications (DESIGN.md "Notifications"): one email per customer, feature, period
and threshold, sent after the usage transaction commits, never lost, never sent twice.

Tasks run in-process here (conftest); test_notifications_integration.py runs a real worker."""

import datetime as dt
import smtplib
import threading
from dataclasses import replace
from decimal import Decimal

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connection, transaction
from django.utils.formats import date_format
from kombu.exceptions import OperationalError

from core.outbox import retry_at
from customers import tasks
from customers.engine import entitlement_check, entitlement_consume, usage_record_batch
from customers.models import Grant, GrantSource, Notification, NotificationStatus
from customers.notifications import (
    notifications_resend,
    quantity_text,
    sweep_delay,
    thresholds_record,
)
from customers.tests.notification_helpers import storage_given

pytestmark = pytest.mark.django_db

BROKEN_BACKEND = "customers.tests.test_notifications.BrokenMailBackend"


class BrokenMailBackend(BaseEmailBackend):
    """A mail server that is down."""

    def send_messages(self, email_messages):
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")


@pytest.fixture
def consume(django_capture_on_commit_callbacks):
    """entitlement_consume as a request does it: on-commit work (the send tasks) runs."""

    def run(storage, quantity, event_id, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return entitlement_consume(
                storage.customer, storage.feature.key, quantity, event_id, **kwargs
            )

    return run


def resets_text(storage) -> str:
    return date_format(storage.subscription.current_period_end.astimezone(dt.UTC), "j F Y, H:i")


def test_crossing_80_percent_sends_one_email_with_the_figures(consume):
    # Given 100 GB of Storage, 79 used
    storage = storage_given()
    consume(storage, "79", "e1")
    assert mail.outbox == []

    # When usage crosses 80%
    result = consume(storage, "1.5", "e2")

    # Then one email to the customer, saying what is used and left and when it resets
    assert result.allowed
    assert len(mail.outbox) == 1
    email = mail.outbox[0]
    assert email.to == ["ops@acme.test"]
    assert email.subject == "You have used 80% of your Storage"
    assert "Used:   80.5 GB of 100 GB" in email.body
    assert "Left:   19.5 GB" in email.body
    assert f"Resets: {resets_text(storage)} UTC" in email.body
    assert f"http://127.0.0.1:8000/dashboard/#usage-{storage.feature.key}" in email.body
    assert "http://127.0.0.1:8000/dashboard/plans/" in email.body
    html, mimetype = email.alternatives[0]
    assert mimetype == "text/html"
    assert "80.5 GB of 100 GB (80%)" in html
    assert 'href="http://127.0.0.1:8000/dashboard/plans/"' in html
    # And no top-up is offered: no pack of Storage is on sale (test_notification_emails.py
    # follows every link of every kind of email)
    assert "Buy a top-up" not in email.body
    # And the notification is kept as sent
    notification = Notification.objects.get()
    assert (notification.threshold, notification.status, notification.attempts) == (
        80,
        NotificationStatus.SENT,
        1,
    )
    assert notification.to == ["ops@acme.test"]
    assert notification.sent_at is not None
    assert notification.period_start == storage.subscription.current_period_start


def test_past_100_percent_sends_one_more_and_repeats_send_nothing(consume):
    storage = storage_given()
    consume(storage, "85", "e1")
    consume(storage, "5", "e2")  # 90%: no threshold

    consume(storage, "10", "e3")  # 100%: exhausted

    assert [m.subject for m in mail.outbox] == [
        "You have used 80% of your Storage",
        "You have used 100% of your Storage",
    ]
    assert "You have used all of your Storage (100%)." in mail.outbox[1].body
    assert "Left:   0 GB" in mail.outbox[1].body
    # A denied request past the hard limit records and sends nothing
    assert not consume(storage, "1", "e4").allowed
    assert len(mail.outbox) == 2
    assert Notification.objects.count() == 2


def test_crossing_again_in_the_same_period_sends_nothing_more(django_capture_on_commit_callbacks):
    # Given storage in use (a level that goes up and down), reported in batches
    storage = storage_given(aggregation="latest")

    def report(level, event_id):
        with django_capture_on_commit_callbacks(execute=True):
            event = {"event_id": event_id, "customer": storage.customer.external_id}
            event |= {"feature": storage.feature.key, "quantity": level}
            assert usage_record_batch([event]).accepted == 1

    report("85", "r1")
    assert [m.subject for m in mail.outbox] == ["You have used 80% of your Storage"]

    # When the level drops below 80% and crosses it again
    report("40", "r2")
    report("88", "r3")

    # Then nothing more this period
    assert len(mail.outbox) == 1
    assert Notification.objects.count() == 1


def test_a_grant_lowering_the_percentage_does_not_resend(consume):
    storage = storage_given()
    consume(storage, "85", "e1")
    Grant.objects.create(
        customer=storage.customer,
        feature=storage.feature,
        quantity=Decimal("100"),
        source=GrantSource.MANUAL,
    )
    consume(storage, "80", "e2")  # 165 of 200: 82.5% again

    assert len(mail.outbox) == 1


def test_a_new_period_starts_over(consume):
    storage = storage_given()
    consume(storage, "81", "e1")
    next_period = storage.subscription.current_period_end + dt.timedelta(hours=1)

    consume(storage, "81", "e2", timestamp=next_period)

    assert [m.subject for m in mail.outbox] == ["You have used 80% of your Storage"] * 2
    first, second = Notification.objects.order_by("pk")
    assert second.period_start == storage.subscription.current_period_end
    assert second.period_start > first.period_start
    assert "Used:   81 GB of 100 GB" in mail.outbox[1].body


def test_several_thresholds_at_once_send_the_highest_only(consume):
    storage = storage_given(notify_at=(50, 80, 100))

    consume(storage, "100", "e1")

    assert [m.subject for m in mail.outbox] == ["You have used 100% of your Storage"]
    assert list(Notification.objects.values_list("threshold", flat=True)) == [100]


def test_grants_count_in_the_percentage(consume):
    # 100 GB a month plus a 100 GB top-up: 80% is 160 GB
    storage = storage_given()
    Grant.objects.create(
        customer=storage.customer,
        feature=storage.feature,
        quantity=Decimal("100"),
        source=GrantSource.TOPUP,
    )
    consume(storage, "150", "e1")
    assert mail.outbox == []

    consume(storage, "10", "e2")

    assert "Used:   160 GB of 200 GB" in mail.outbox[0].body
    assert "Left:   40 GB" in mail.outbox[0].body


def test_alerts_go_to_the_notification_addresses(consume):
    storage = storage_given()
    storage.customer.notification_emails = "alerts@acme.test, cto@acme.test"
    storage.customer.save()

    consume(storage, "90", "e1")

    assert mail.outbox[0].to == ["alerts@acme.test", "cto@acme.test"]


def test_no_address_marks_the_notification_failed(consume):
    storage = storage_given(email="")

    assert consume(storage, "90", "e1").allowed

    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.FAILED
    assert "No recipient" in notification.last_error
    assert mail.outbox == []


def test_the_mail_server_down_keeps_it_pending_and_the_sweep_sends_it_once(consume, settings):
    # Given the mail server is down while usage crosses 80%
    settings.EMAIL_BACKEND = BROKEN_BACKEND
    result = consume(storage := storage_given(), "90", "e1")

    # Then the request succeeds and the notification waits, with the error
    assert result.allowed
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.PENDING
    assert notification.attempts == 1
    assert "SMTPServerDisconnected: Connection unexpectedly closed" in notification.last_error
    assert notification.sent_at is None

    # When the mail server is back: the sweep leaves it alone for two minutes...
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert tasks.notifications_sweep.delay().get() == 0
    # ...then sends it
    assert tasks.notifications_sweep.delay(due_within_seconds=120).get() == 1

    # Then exactly one email, however often the sweep runs
    assert tasks.notifications_sweep.delay(due_within_seconds=3600).get() == 0
    assert len(mail.outbox) == 1
    notification.refresh_from_db()
    assert (notification.status, notification.attempts, notification.last_error) == (
        NotificationStatus.SENT,
        2,
        "",
    )
    assert "Used:   90 GB of 100 GB" in mail.outbox[0].body
    assert storage.customer.email in mail.outbox[0].to


def test_the_sweep_backs_off_while_the_mail_server_stays_down(consume, settings):
    settings.EMAIL_BACKEND = BROKEN_BACKEND
    consume(storage_given(), "90", "e1")
    notification = Notification.objects.get()
    gaps = []
    for _ in range(12):
        before = notification.next_attempt_at
        Notification.objects.update(next_attempt_at=before - dt.timedelta(hours=2))
        assert tasks.notifications_sweep.delay().get() == 1
        notification.refresh_from_db()
        gaps.append((notification.next_attempt_at - notification.last_attempt_at).total_seconds())

    # Two minutes apart while a task's own retries would run, then doubling...
    assert gaps == [120, 120, 240, 240, 240, 240, 480, 480, 480, 480, 960, 960]
    # ...at most an hour apart
    later = retry_at(attempts=1000, now=notification.created_at, delay=sweep_delay())
    assert later - notification.created_at == dt.timedelta(hours=1)
    assert notification.attempts == 13
    assert notification.status == NotificationStatus.PENDING


def test_a_notification_failing_for_a_day_is_marked_failed_and_can_be_resent(
    consume, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = BROKEN_BACKEND
    settings.NOTIFICATION_GIVE_UP_AFTER_SECONDS = 0
    consume(storage_given(), "90", "e1")

    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == (NotificationStatus.FAILED, 1)
    assert tasks.notifications_sweep.delay(due_within_seconds=86400).get() == 0  # given up

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    with django_capture_on_commit_callbacks(execute=True):
        assert notifications_resend(notifications=Notification.objects.all()) == 1
    notification.refresh_from_db()
    assert (notification.status, notification.attempts) == (NotificationStatus.SENT, 2)
    assert len(mail.outbox) == 1


def test_a_notification_marked_sent_is_never_sent_again(consume):
    consume(storage_given(), "90", "e1")
    notification = Notification.objects.get()
    assert len(mail.outbox) == 1

    assert tasks.notification_send.delay(notification.pk).get() is False
    assert tasks.notification_send(notification.pk) is False

    assert len(mail.outbox) == 1
    notification.refresh_from_db()
    assert notification.attempts == 1


def test_the_broker_down_does_not_fail_the_request_and_the_sweep_sends_later(consume, monkeypatch):
    # Given the broker cannot be reached when the transaction commits
    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    monkeypatch.setattr(tasks.notification_send, "apply_async", broker_down)
    result = consume(storage_given(), "90", "e1")

    # Then the consume succeeds and the notification is pending
    assert result.allowed
    assert Notification.objects.get().status == NotificationStatus.PENDING
    assert mail.outbox == []
    # And while the broker stays down the sweep fails quietly
    assert tasks.notifications_sweep.delay(due_within_seconds=120).get() == 0

    # When the broker is back, the sweep sends it exactly once
    monkeypatch.undo()
    assert tasks.notifications_sweep.delay(due_within_seconds=120).get() == 1
    assert tasks.notifications_sweep.delay(due_within_seconds=120).get() == 0
    assert len(mail.outbox) == 1
    assert Notification.objects.get().status == NotificationStatus.SENT


def test_unlimited_and_dry_runs_record_nothing(consume):
    storage = storage_given()
    assert consume(storage, "90", "e1", dry_run=True).allowed
    storage.entitlement.limit = None
    storage.entitlement.unlimited = True
    storage.entitlement.save()
    consume(storage, "1000", "e2")

    assert Notification.objects.count() == 0
    assert mail.outbox == []


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (Decimal("80.0000"), "GB", "80 GB"),
        (Decimal("87.5000"), "GB", "87.5 GB"),
        (Decimal("1000"), "", "1,000"),  # grouped, as the dashboard shows it
        (Decimal("0.0000"), "calls", "0 calls"),
        (Decimal("0.0100"), "GB", "0.01 GB"),
    ],
)
def test_quantities_read_without_trailing_zeros(value, unit, text):
    assert quantity_text(value, unit) == text


# --- concurrency (PostgreSQL) ----------------------------------------------------------------

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL row locks; SQLite serialises"
)


def _in_threads(n: int, work) -> list:
    """Runs `work()` in `n` threads released together; returns results or exceptions."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        try:
            barrier.wait(timeout=10)
            results[i] = work()
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_consumes_crossing_80_percent_make_one_notification():
    assert connection.vendor == "postgresql"
    storage = storage_given()
    entitlement_consume(storage.customer, storage.feature.key, "79", "base")
    counter = iter(range(20))
    lock = threading.Lock()

    def one():
        with lock:
            n = next(counter)
        return entitlement_consume(storage.customer, storage.feature.key, "1", f"c{n}")

    results = _in_threads(20, one)

    assert all(r.allowed for r in results), results
    assert Notification.objects.count() == 1
    assert len(mail.outbox) == 1
    assert entitlement_check(storage.customer, storage.feature.key).usage == Decimal("99")


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_records_of_the_same_crossing_insert_one_row():
    # The unique constraint, not the engine's locks: each thread sees the same crossing.
    storage = storage_given()
    entitlement_consume(storage.customer, storage.feature.key, "79", "base")
    before = entitlement_check(storage.customer, storage.feature.key)
    after = replace(before, usage=Decimal("81"), balance=Decimal("19"))

    def one():
        with transaction.atomic():
            return thresholds_record(
                customer=storage.customer, feature=storage.feature, before=before, after=after
            )

    results = _in_threads(20, one)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert len([r for r in results if r is not None]) == 1
    assert Notification.objects.count() == 1
    assert len(mail.outbox) == 1
