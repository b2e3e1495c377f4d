from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_initial"),
        ("entitlements_site", "0003_api_key_to_core"),
    ]

    operations = [
        migrations.AlterModelTable(name="apikey", table=None),
    ]
