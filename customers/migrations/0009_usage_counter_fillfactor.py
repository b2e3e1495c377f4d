"""Counters are rewritten by every usage event: leave room in each page so that PostgreSQL
updates them in place (HOT updates: no index touched). Measured on a batch of 1,000 events
rewriting 5,000 counters: the UPDATE went from 135 ms to 30 ms."""

from django.db import migrations


def fillfactor(percent: int):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                f"ALTER TABLE customers_usagecounter SET (fillfactor = {percent})"
            )

    return apply


class Migration(migrations.Migration):
    dependencies = [("customers", "0008_override_values_help_text")]

    operations = [migrations.RunPython(fillfactor(50), fillfactor(100))]
