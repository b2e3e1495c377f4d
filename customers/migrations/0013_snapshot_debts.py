"""Writes that Redis did not hear of, kept in the database until their snapshots are voided
(customers/snapshots.py), and the beat schedule of the backstop that settles them."""

import django.utils.timezone
from django.db import migrations, models

SCHEDULE = "Void usage snapshots owed"
TASK = "customers.tasks.snapshots_settle"


def schedule_create(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(every=10, period="seconds")
    # A tick not run within its interval is dropped: the next one does the same work.
    PeriodicTask.objects.update_or_create(
        name=SCHEDULE,
        defaults={"task": TASK, "interval": interval, "enabled": True, "expire_seconds": 10},
    )


def schedule_delete(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=SCHEDULE).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("customers", "0012_input_bounds"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.CreateModel(
            name="SnapshotDebt",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "customer_id",
                    models.BigIntegerField(help_text="None: every customer.", null=True),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
        migrations.RunPython(schedule_create, schedule_delete),
    ]
