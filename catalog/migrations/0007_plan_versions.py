"""Plan versions (DESIGN.md "Plan versions"): every plan gets its version 1, published, at the
plan's price, holding the plan's entitlements as they are; nothing any customer sees changes."""

import django.db.models.deletion
import djmoney.models.fields
import djmoney.models.validators
import core.bounds
import simple_history.models
from decimal import Decimal
from django.conf import settings
from django.db import migrations, models
from django.db.models import OuterRef, Subquery

from core.roles import PRODUCT_MANAGERS, SUPPORT, grant_group_permissions


def versions_visible(apps, schema_editor):
    # The admin shows versions read-only: they change through the plan editor's services.
    view = ["view_planversion", "view_historicalplanversion"]
    grant_group_permissions(apps, "catalog", {PRODUCT_MANAGERS: view, SUPPORT: view})


def versions_first(apps, schema_editor):
    Plan = apps.get_model("catalog", "Plan")
    PlanVersion = apps.get_model("catalog", "PlanVersion")
    PlanEntitlement = apps.get_model("catalog", "PlanEntitlement")
    PlanVersion.objects.bulk_create(
        [
            PlanVersion(
                plan_id=plan.pk,
                number=1,
                status="published",
                price=plan.price,
                price_currency=plan.price_currency,
                published_at=plan.created_at,
            )
            for plan in Plan.objects.order_by("pk").iterator()
        ],
        batch_size=500,
    )
    first = PlanVersion.objects.filter(plan_id=OuterRef("plan_id"), number=1).values("pk")[:1]
    PlanEntitlement.objects.update(version=Subquery(first))


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0006_decimal_bounds'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='HistoricalPlanVersion',
            fields=[
                ('id', models.BigIntegerField(auto_created=True, blank=True, db_index=True, verbose_name='ID')),
                ('number', models.PositiveIntegerField()),
                ('status', models.CharField(choices=[('draft', 'Draft'), ('published', 'Published'), ('superseded', 'Superseded')], default='draft', max_length=16)),
                ('price_currency', djmoney.models.fields.CurrencyField(choices=[('GBP', 'British Pound'), ('EUR', 'Euro'), ('USD', 'US Dollar')], default='USD', editable=False, max_length=3)),
                ('price', djmoney.models.fields.MoneyField(decimal_places=2, help_text='What its subscribers pay per period, from their next period on.', max_digits=12, validators=[djmoney.models.validators.MinMoneyValidator(0), core.bounds.validate_decimal])),
                ('published_at', models.DateTimeField(blank=True, null=True)),
                ('created_at', models.DateTimeField(blank=True, editable=False)),
                ('updated_at', models.DateTimeField(blank=True, editable=False)),
                ('history_id', models.AutoField(primary_key=True, serialize=False)),
                ('history_date', models.DateTimeField(db_index=True)),
                ('history_change_reason', models.CharField(max_length=100, null=True)),
                ('history_type', models.CharField(choices=[('+', 'Created'), ('~', 'Changed'), ('-', 'Deleted')], max_length=1)),
            ],
            options={
                'verbose_name': 'historical plan version',
                'verbose_name_plural': 'historical plan versions',
                'ordering': ('-history_date', '-history_id'),
                'get_latest_by': ('history_date', 'history_id'),
            },
            bases=(simple_history.models.HistoricalChanges, models.Model),
        ),
        migrations.CreateModel(
            name='PlanVersion',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('number', models.PositiveIntegerField()),
                ('status', models.CharField(choices=[('draft', 'Draft'), ('published', 'Published'), ('superseded', 'Superseded')], default='draft', max_length=16)),
                ('price_currency', djmoney.models.fields.CurrencyField(choices=[('GBP', 'British Pound'), ('EUR', 'Euro'), ('USD', 'US Dollar')], default='USD', editable=False, max_length=3)),
                ('price', djmoney.models.fields.MoneyField(decimal_places=2, help_text='What its subscribers pay per period, from their next period on.', max_digits=12, validators=[djmoney.models.validators.MinMoneyValidator(0), core.bounds.validate_decimal])),
                ('published_at', models.DateTimeField(blank=True, null=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'ordering': ['plan', '-number'],
            },
        ),
        migrations.AddField(
            model_name='historicalplanversion',
            name='history_user',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='historicalplanversion',
            name='plan',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='catalog.plan'),
        ),
        migrations.AddField(
            model_name='planversion',
            name='plan',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='versions', to='catalog.plan'),
        ),
        migrations.AddField(
            model_name='historicalplanentitlement',
            name='version',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='catalog.planversion'),
        ),
        migrations.AddField(
            model_name='planentitlement',
            name='version',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.CASCADE, related_name='entitlements', to='catalog.planversion'),
        ),
        migrations.AddConstraint(
            model_name='planversion',
            constraint=models.UniqueConstraint(fields=('plan', 'number'), name='plan_version_unique_number', violation_error_message='This plan already has a version with that number.'),
        ),
        migrations.AddConstraint(
            model_name='planversion',
            constraint=models.UniqueConstraint(condition=models.Q(('status', 'published')), fields=('plan',), name='plan_version_one_published', violation_error_message='A plan has one published version.'),
        ),
        migrations.AddConstraint(
            model_name='planversion',
            constraint=models.UniqueConstraint(condition=models.Q(('status', 'draft')), fields=('plan',), name='plan_version_one_draft', violation_error_message='This plan already has a draft version.'),
        ),
        migrations.AddConstraint(
            model_name='planversion',
            constraint=models.CheckConstraint(condition=models.Q(('number__gte', 1)), name='plan_version_number_positive'),
        ),
        migrations.AddConstraint(
            model_name='planversion',
            constraint=models.CheckConstraint(condition=models.Q(('price__gte', 0)), name='plan_version_price_not_negative'),
        ),
        migrations.AddConstraint(
            model_name='planversion',
            constraint=models.CheckConstraint(condition=models.Q(('price__gt', Decimal('-10000000000')), ('price__lt', Decimal('10000000000'))), name='plan_version_price_in_bounds'),
        ),
        migrations.RunPython(versions_first, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='planentitlement',
            name='version',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='entitlements', to='catalog.planversion'),
        ),
        migrations.RemoveConstraint(
            model_name='planentitlement',
            name='plan_entitlement_unique_feature',
        ),
        migrations.AddConstraint(
            model_name='planentitlement',
            constraint=models.UniqueConstraint(fields=('version', 'feature'), name='plan_entitlement_unique_feature', violation_error_message='This plan already has an entitlement for that feature.'),
        ),
            migrations.RunPython(versions_visible, migrations.RunPython.noop),
    ]
