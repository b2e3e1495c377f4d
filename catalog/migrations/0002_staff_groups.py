from django.db import migrations

from core.roles import (
    PRODUCT_MANAGERS,
    SUPPORT,
    grant_group_permissions,
    model_permissions,
)

MODELS = ["feature", "plan", "planentitlement", "topuppack"]
HISTORY = ["historicalfeature", "historicalplan", "historicalplanentitlement"]
HISTORY += ["historicaltopuppack"]


def create_groups(apps, schema_editor):
    grant_group_permissions(
        apps,
        "catalog",
        {
            PRODUCT_MANAGERS: model_permissions(MODELS, ["add", "change", "delete", "view"])
            + model_permissions(HISTORY, ["view"]),
            SUPPORT: model_permissions(MODELS + HISTORY, ["view"]),
        },
    )


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, migrations.RunPython.noop)]
