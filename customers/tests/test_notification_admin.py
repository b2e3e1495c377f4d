"""Notifications and webhooks in the admin, and the beat schedules."""

import re

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

import customers.admin_notifications  # noqa: F401 (registers the admin classes)
from customers import webhooks
from customers.models import (
    Notification,
    NotificationStatus,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)
from customers.tests.notification_helpers import storage_given
from entitlements_site.celery import app as celery_app

pytestmark = pytest.mark.django_db


def failed_notification(storage) -> Notification:
    return Notification.objects.create(
        customer=storage.customer,
        feature=storage.feature,
        period_start=storage.subscription.current_period_start,
        threshold=80,
        to=["ops@acme.test"],
        status=NotificationStatus.FAILED,
        attempts=20,
        last_error="SMTPServerDisconnected: Connection unexpectedly closed",
        usage="85",
        limit="100",
        capacity="100",
        balance="15",
        unit="GB",
        resets_at=storage.subscription.current_period_end,
    )


def staff(group: str) -> User:
    user = User.objects.create_user(f"{group.lower().replace(' ', '-')}", password="x")
    user.is_staff = True
    user.save()
    user.groups.add(Group.objects.get(name=group))
    return user


def test_the_notification_list_shows_status_and_errors(admin_client):
    notification = failed_notification(storage_given())

    page = admin_client.get(
        reverse("admin:customers_notification_changelist"), {"status": "failed"}
    )

    assert page.status_code == 200
    text = page.content.decode()
    assert "Acme Inc" in text
    assert "SMTPServerDisconnected" in text
    detail = admin_client.get(
        reverse("admin:customers_notification_change", args=[notification.pk])
    )
    assert detail.status_code == 200
    assert "85" in detail.content.decode()


def test_support_resends_a_failed_notification(client, django_capture_on_commit_callbacks):
    notification = failed_notification(storage_given())
    client.force_login(staff("Support"))

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:customers_notification_changelist"),
            {"action": "resend", "_selected_action": [notification.pk]},
            follow=True,
        )

    assert response.status_code == 200
    assert "1 notification(s) queued to send." in response.content.decode()
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.SENT
    assert [m.subject for m in mail.outbox] == ["You have used 80% of your Storage"]


def test_resend_never_sends_a_sent_notification_again(admin_client):
    notification = failed_notification(storage_given())
    Notification.objects.filter(pk=notification.pk).update(status=NotificationStatus.SENT)

    response = admin_client.post(
        reverse("admin:customers_notification_changelist"),
        {"action": "resend", "_selected_action": [notification.pk]},
        follow=True,
    )

    assert "1 already sent: not sent again." in response.content.decode()
    assert mail.outbox == []


def test_product_managers_see_notifications_but_cannot_resend(client):
    failed_notification(storage_given())
    client.force_login(staff("Product managers"))

    page = client.get(reverse("admin:customers_notification_changelist"))

    assert page.status_code == 200
    assert 'value="resend"' not in page.content.decode()


def test_an_endpoint_is_registered_with_its_event_types_and_a_secret(admin_client):
    form = admin_client.get(reverse("admin:customers_webhookendpoint_add"))
    secret = re.search(r'name="secret" value="([^"]+)"', form.content.decode())[1]
    assert secret.startswith("whsec_")

    response = admin_client.post(
        reverse("admin:customers_webhookendpoint_add"),
        {
            "url": "https://hooks.example.com/entitlements",
            "description": "Billing system",
            "active": "on",
            "event_types": ["usage.threshold_crossed"],
            "secret": secret,
        },
    )

    assert response.status_code == 302
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.event_types == ["usage.threshold_crossed"]
    assert endpoint.secret == secret
    assert (
        admin_client.get(reverse("admin:customers_webhookendpoint_changelist")).status_code == 200
    )


def test_deliveries_are_read_only_and_can_be_retried(admin_client):
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hooks", secret="s")
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        event_type="entitlement.updated",
        event_id="evt_1",
        payload={"id": "evt_1"},
        status=WebhookDeliveryStatus.FAILED,
        attempts=20,
        response_code=500,
    )

    assert (
        admin_client.get(reverse("admin:customers_webhookdelivery_changelist")).status_code == 200
    )
    page = admin_client.get(reverse("admin:customers_webhookdelivery_change", args=[delivery.pk]))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    admin_client.post(
        reverse("admin:customers_webhookdelivery_changelist"),
        {"action": "retry", "_selected_action": [delivery.pk]},
    )
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (WebhookDeliveryStatus.PENDING, 20)
    assert delivery.id in webhooks.deliveries_due()


def test_beat_schedules_the_sweeps_and_the_period_close():
    schedules = {
        t.task: (t.interval.every, t.interval.period, t.enabled)
        for t in PeriodicTask.objects.select_related("interval")
    }

    assert schedules["billing.tasks.close_periods"] == (15, "minutes", True)
    assert schedules["customers.tasks.notifications_sweep"] == (1, "minutes", True)
    assert schedules["customers.tasks.webhook_deliveries_sweep"] == (1, "minutes", True)
    assert schedules["customers.tasks.reservations_expire"] == (10, "minutes", True)
    celery_app.loader.import_default_modules()
    # Each schedule names a task the worker knows
    assert set(schedules) <= set(celery_app.tasks)
