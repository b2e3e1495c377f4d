"""Every subscription is on version 1 of its plan (made by catalog 0007 from the plan as it
was): the same price and entitlements as before."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def subscriptions_on_version_one(apps, schema_editor):
    PlanVersion = apps.get_model("catalog", "PlanVersion")
    first = PlanVersion.objects.filter(plan_id=OuterRef("plan_id"), number=1).values("pk")[:1]
    for name in ("Subscription", "HistoricalSubscription"):
        apps.get_model("customers", name).objects.update(plan_version=Subquery(first))


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0007_plan_versions'),
        ('customers', '0014_subscription_past_due'),
    ]

    operations = [
        migrations.AddField(
            model_name='historicalsubscription',
            name='plan_version',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='catalog.planversion'),
        ),
        migrations.AddField(
            model_name='subscription',
            name='plan_version',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='subscriptions', to='catalog.planversion'),
        ),
            migrations.RunPython(subscriptions_on_version_one, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='subscription',
            name='plan_version',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='subscriptions', to='catalog.planversion'),
        ),
    ]
