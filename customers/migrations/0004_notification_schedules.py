"""The beat schedules (django-celery-beat's DatabaseScheduler reads these rows) and the staff
groups' permissions on notifications. Task names match the explicit `name=` of each task."""

from django.db import migrations

from core.roles import PRODUCT_MANAGERS, SUPPORT, grant_group_permissions

SCHEDULES = [
    # (periodic task name, task, every, period)
    ("Close billing periods", "billing.tasks.close_periods", 15, "minutes"),
    ("Send pending notifications", "customers.tasks.notifications_sweep", 1, "minutes"),
    ("Deliver pending webhooks", "customers.tasks.webhook_deliveries_sweep", 1, "minutes"),
]


def schedules_create(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, every, period in SCHEDULES:
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
        PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": task, "interval": interval, "enabled": True}
        )


def schedules_delete(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, *_ in SCHEDULES]).delete()


def groups_grant(apps, schema_editor):
    # Support sees a customer's notifications and may resend one; product managers see them.
    grant_group_permissions(
        apps,
        "customers",
        {
            PRODUCT_MANAGERS: ["view_notification"],
            SUPPORT: ["view_notification", "change_notification"],
        },
    )


class Migration(migrations.Migration):
    dependencies = [
        ("customers", "0003_notifications_webhooks"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.RunPython(schedules_create, schedules_delete),
        migrations.RunPython(groups_grant, migrations.RunPython.noop),
    ]
