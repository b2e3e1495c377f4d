from django.db import migrations

from core.roles import (
    PRODUCT_MANAGERS,
    SUPPORT,
    grant_group_permissions,
    model_permissions,
)

MODELS = ["customer", "customeruser", "subscription", "entitlementoverride", "grant"]
MODELS += ["usageevent", "usagecounter"]
HISTORY = ["historicalcustomer", "historicalsubscription", "historicalentitlementoverride"]
HISTORY += ["historicalgrant"]
# What support edits for a customer: the customer itself, its plan, its deals and its units.
SUPPORT_EDITS = ["customer", "subscription", "entitlementoverride", "grant"]


def create_groups(apps, schema_editor):
    grant_group_permissions(
        apps,
        "customers",
        {
            PRODUCT_MANAGERS: model_permissions(MODELS + HISTORY, ["view"]),
            SUPPORT: model_permissions(MODELS + HISTORY, ["view"])
            + model_permissions(SUPPORT_EDITS, ["add", "change"]),
        },
    )


class Migration(migrations.Migration):
    dependencies = [
        ("customers", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, migrations.RunPython.noop)]
