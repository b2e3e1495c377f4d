"""The beat schedule of `usage_counters_vacuum` (customers/checks.py): every minute, a VACUUM
of the usage counters when the PostgreSQL server runs without autovacuum (nothing otherwise)."""

from django.db import migrations

SCHEDULE = "Vacuum usage counters (without autovacuum)"
TASK = "customers.tasks.usage_counters_vacuum"


def schedule_create(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
    # A tick not run within its interval is dropped: the next one does the same work.
    PeriodicTask.objects.update_or_create(
        name=SCHEDULE,
        defaults={"task": TASK, "interval": interval, "enabled": True, "expire_seconds": 60},
    )


def schedule_delete(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=SCHEDULE).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("customers", "0018_usage_draws_reversals"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule_create, schedule_delete)]
