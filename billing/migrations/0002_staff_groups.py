from django.db import migrations

from core.roles import (
    PRODUCT_MANAGERS,
    SUPPORT,
    grant_group_permissions,
    model_permissions,
)

MODELS = ["invoice", "invoiceline", "payment", "topuppurchase", "historicalinvoice"]


def create_groups(apps, schema_editor):
    grant_group_permissions(
        apps,
        "billing",
        {
            PRODUCT_MANAGERS: model_permissions(MODELS, ["view"]),
            SUPPORT: model_permissions(MODELS, ["view"]),
        },
    )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, migrations.RunPython.noop)]
