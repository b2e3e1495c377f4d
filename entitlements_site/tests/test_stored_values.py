"""Rows stored before the decimal bounds, which a read can no longer load, are found by
`manage.py stored_values_check` and by `manage.py check --database default`."""

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db import connection

from catalog.models import PlanEntitlement
from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory, PlanFactory


def store_bypassing_the_check(entitlement: PlanEntitlement, raw_limit: str) -> None:
    """What an installation could hold before the check existed (SQLite kept such a value as a
    float; PostgreSQL as the exact number)."""
    table = PlanEntitlement._meta.db_table
    column = PlanEntitlement._meta.get_field("limit").column
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = ON")
        else:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending trigger events
            cursor.execute(
                f'ALTER TABLE "{table}" DROP CONSTRAINT plan_entitlement_decimals_in_bounds'
            )
        cursor.execute(
            f'UPDATE "{table}" SET "{column}" = {raw_limit} WHERE id = %s', [entitlement.pk]
        )
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = OFF")


@pytest.fixture
def entitlement(db):
    plan = PlanFactory(key="basic")
    return PlanEntitlementFactory(
        plan=plan, feature=FeatureFactory(metered=True), limit=Decimal("5")
    )


def test_every_stored_value_within_bounds_passes(entitlement, capsys):
    call_command("stored_values_check")
    assert "Every stored decimal is within the bounds." in capsys.readouterr().out
    call_command("check", databases=["default"])


def test_a_value_stored_before_the_bound_is_listed_with_what_to_do(entitlement, capsys):
    # Given a limit of 9999999999999999.9999 stored before the database check existed
    store_bypassing_the_check(entitlement, "9999999999999999.9999")

    # When support runs the check, then the row is named and the command fails with the fix
    with pytest.raises(CommandError, match="Correct each with SQL"):
        call_command("stored_values_check")
    assert f"catalog.PlanEntitlement pk={entitlement.pk} limit=" in capsys.readouterr().out
    # And `manage.py check --database default` (which `migrate` runs) reports it too
    with pytest.raises(SystemCheckError, match="stored_values_check"):
        call_command("check", databases=["default"])
