"""ApiKey now belongs to the kernel app `core` (core/migrations/0001_initial.py): state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("entitlements_site", "0002_api_key_scope"),
        ("core", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ApiKey")],
            database_operations=[],
        ),
    ]
