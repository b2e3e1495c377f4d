"""Rows stored before the decimal bounds (bounds.py) that a read can no longer load.

Before the database checks existed, a value such as 9999999999999999.9999 could be stored on
SQLite (as a float) and then failed every read of its row with `decimal.InvalidOperation`.
`python manage.py stored_values_check` lists such rows, `manage.py check --database default`
reports them, and the migrations that add the checks stop with this explanation instead of a
database error. It reads with SQL only: loading those rows through the ORM is what fails.
"""

from dataclasses import dataclass

from django.apps import apps as installed_apps
from django.core import checks
from django.db import DatabaseError, connections, transaction

from .bounds import decimal_ceiling

# (app, model, field, max_digits, decimal_places): every decimal the product accepts.
BOUNDED_DECIMALS = (
    ("catalog", "Plan", "price", 12, 2),
    ("catalog", "PlanVersion", "price", 12, 2),
    ("catalog", "PlanEntitlement", "limit", 20, 4),
    ("catalog", "PlanEntitlement", "overage_price", 12, 4),
    ("catalog", "TopUpPack", "quantity", 20, 4),
    ("catalog", "TopUpPack", "price", 12, 2),
    ("customers", "EntitlementOverride", "limit", 20, 4),
    ("customers", "EntitlementOverride", "overage_price", 12, 4),
    ("customers", "Grant", "quantity", 20, 4),
    ("customers", "UsageEvent", "quantity", 20, 4),
    ("customers", "UsageDraw", "quantity", 20, 4),
    ("customers", "UsageReversal", "quantity", 20, 4),
)
STOPPED = (
    "{count} stored value(s) are outside what both databases read back (at most 15 digits, 4"
    " after the point). List them with `python manage.py stored_values_check`, correct them,"
    " then migrate again."
)


@dataclass(frozen=True)
class OutOfBounds:
    model: str
    pk: object
    field: str
    value: str


def stored_values_out_of_bounds(
    *, using: str = "default", apps=installed_apps, only: tuple[str, ...] | None = None
) -> list[OutOfBounds]:
    """Every row whose bounded decimal a read cannot load exactly. `apps` may be a migration's
    historical registry; `only` limits the search to these app labels. Tables not created yet
    are skipped."""
    connection = connections[using]
    quote = connection.ops.quote_name
    found = []
    for app_label, model_name, field_name, max_digits, places in BOUNDED_DECIMALS:
        if only is not None and app_label not in only:
            continue
        try:
            model = apps.get_model(app_label, model_name)
        except LookupError:
            continue
        column = quote(model._meta.get_field(field_name).column)
        ceiling = int(decimal_ceiling(max_digits, places))
        where = f"{column} >= %s OR {column} <= %s"
        if connection.vendor == "sqlite":  # text in a decimal column loads as nothing valid
            where += f" OR typeof({column}) NOT IN ('integer', 'real', 'null')"
        sql = (
            f"SELECT {quote(model._meta.pk.column)}, CAST({column} AS TEXT)"
            f" FROM {quote(model._meta.db_table)} WHERE {where}"
        )
        try:
            with transaction.atomic(using=using), connection.cursor() as cursor:
                cursor.execute(sql, [ceiling, -ceiling])
                rows = cursor.fetchall()
        except DatabaseError:
            continue  # the table does not exist yet (a database being migrated from scratch)
        found += [OutOfBounds(model._meta.label, pk, field_name, text) for pk, text in rows]
    return found


def stop_if_out_of_bounds(app_label: str):
    """A RunPython operation's code for the migrations that add the checks."""

    def run(apps, schema_editor):
        found = stored_values_out_of_bounds(
            using=schema_editor.connection.alias, apps=apps, only=(app_label,)
        )
        if found:
            raise RuntimeError(STOPPED.format(count=len(found)))

    return run


@checks.register(checks.Tags.database)
def stored_values_check(app_configs=None, databases=None, **kwargs):
    """`manage.py check --database default` (and `migrate`): rows that no longer load."""
    messages = []
    for alias in databases or ():
        found = stored_values_out_of_bounds(using=alias)
        if found:
            messages.append(
                checks.Error(
                    STOPPED.format(count=len(found)).replace(", then migrate again", ""),
                    hint="; ".join(f"{f.model} {f.pk} {f.field}={f.value}" for f in found[:5]),
                    id="entitlements.E001",
                )
            )
    return messages
