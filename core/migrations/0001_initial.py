"""ApiKey moves here from entitlements_site (the kernel owns API-key auth): state only, the
table stays, then takes this app's name; its content type moves along with its permissions."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def content_type_move(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    old = ContentType.objects.filter(app_label="entitlements_site", model="apikey")
    if not ContentType.objects.filter(app_label="core", model="apikey").exists():
        old.update(app_label="core")


def content_type_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="core", model="apikey").update(
        app_label="entitlements_site"
    )


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("contenttypes", "0002_remove_content_type_name"),
        ("entitlements_site", "0002_api_key_scope"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ApiKey",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=200)),
                        (
                            "scope",
                            models.CharField(
                                choices=[
                                    ("runtime", "Runtime: check, consume, report usage"),
                                    ("read", "Read: every GET"),
                                    ("management", "Management: everything"),
                                ],
                                default="management",
                                help_text="Give an application server a runtime key: it cannot change the catalog.",
                                max_length=16,
                            ),
                        ),
                        ("prefix", models.CharField(db_index=True, editable=False, max_length=32)),
                        ("key_hash", models.CharField(editable=False, max_length=64, unique=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("last_used_at", models.DateTimeField(blank=True, editable=False, null=True)),
                        ("revoked_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "created_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "API key",
                        "ordering": ["-created_at"],
                        "db_table": "entitlements_site_apikey",
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_type_move, content_type_back),
    ]
