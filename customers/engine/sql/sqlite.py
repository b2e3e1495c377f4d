"""SQLite (and any database without PostgreSQL's arrays): row values and VALUES lists,
executemany, the ORM. SQLite serialises writers, so its "locks" are the transaction's."""

from __future__ import annotations

import datetime as dt

from django.db import connection
from django.db.models import Q, Subquery

from catalog.models import CatalogVersion

from ...models import Customer, Grant, UsageCounter, UsageDraw
from .common import (
    COUNTER_VALUES,
    GRANT_ROW,
    counter_from_row,
    counter_values,
    db_param_time,
    event_columns,
    versions_sql,
)

LOCK_CHUNK = 1000  # counter keys per locking query (4 parameters each)
EVENT_CHUNK = 500  # events per INSERT (7 parameters each)
consume_in_two_trips = False


def counters_select_for_update(ordered: list[tuple], version_of: int | None):
    """SELECT .. FOR UPDATE (where the database has it) of the counters of `ordered` keys,
    matched as row values against a VALUES list, one statement per LOCK_CHUNK keys."""
    quote = connection.ops.quote_name
    table = quote(UsageCounter._meta.db_table)
    window, end = quote("window"), quote("end")
    versions, version_params = versions_sql(version_of)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    locked, version = {}, None
    with connection.cursor() as cursor:
        for offset in range(0, len(ordered), LOCK_CHUNK):
            chunk = ordered[offset : offset + LOCK_CHUNK]
            params = list(version_params)
            for customer_id, feature_id, kind, start in chunk:
                params += [customer_id, feature_id, str(kind), db_param_time(start)]
            keys = "VALUES " + ", ".join(["(%s, %s, %s, %s)"] * len(chunk))
            cursor.execute(
                f"SELECT id, customer_id, feature_id, {window}, start, {end}, used, drawn, level, "
                f"level_at, {versions} FROM {table} "
                f"WHERE (customer_id, feature_id, {window}, start) IN ({keys}) "
                f"ORDER BY customer_id, feature_id, {window}, start{lock}",
                params,
            )
            for row in cursor.fetchall():
                counter = counter_from_row(row[:10])
                counter.loaded = counter_values(counter)
                key = (counter.customer_id, counter.feature_id, counter.window, counter.start)
                locked[key] = counter
                if version_of is not None and version is None and row[10] is not None:
                    version = (int(row[10]), int(row[11] or 0))
    return locked, version


def counters_save(counters: list) -> None:
    """The changed counters in one executemany."""
    fields = [UsageCounter._meta.get_field(name) for name in COUNTER_VALUES]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {quote(UsageCounter._meta.db_table)} SET {assignments} "
            f"WHERE {quote(UsageCounter._meta.pk.column)} = %s",
            [
                [f.get_db_prep_save(getattr(c, f.attname), connection) for f in fields] + [c.pk]
                for c in counters
            ],
        )


def grants_lock(customer_ids, feature_ids, since: dt.datetime, until: dt.datetime):
    return (
        Grant.objects.filter(
            customer_id__in=customer_ids, feature_id__in=feature_ids, effective_at__lte=until
        )
        .filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=since),
            Q(voided_at__isnull=True) | Q(voided_at__gt=since),
        )
        .select_for_update()
        .order_by("pk")
        .values_list(*GRANT_ROW)
    )


def events_insert(
    items: list[dict], now: dt.datetime, *, immediate: bool = False
) -> dict[tuple[int, str], int]:
    """`immediate`: nothing to do, foreign keys are checked at once here already."""
    fields, columns, table, pk_column = event_columns()
    inserted: dict[tuple[int, str], int] = {}
    with connection.cursor() as cursor:
        for start in range(0, len(items), EVENT_CHUNK):
            chunk = items[start : start + EVENT_CHUNK]
            params = []
            for i in chunk:
                values = (
                    i["customer"].pk,
                    i["feature"].pk,
                    i["event_id"],
                    i["quantity"],
                    i["timestamp"],
                    i["properties"],
                    now,
                )
                params += [
                    f.get_db_prep_save(v, connection) for f, v in zip(fields, values, strict=True)
                ]
            row = "(" + ", ".join(["%s"] * len(fields)) + ")"
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * len(chunk))} "
                "ON CONFLICT (customer_id, event_id) DO NOTHING "
                f"RETURNING customer_id, event_id, {pk_column}",
                params,
            )
            inserted.update(((c, e), pk) for c, e, pk in cursor.fetchall())
    return inserted


def draws_insert(rows: list[tuple]) -> None:
    UsageDraw.objects.bulk_create(
        [
            UsageDraw(event_id=event, grant_id=grant, window=kind, quantity=quantity)
            for event, grant, kind, quantity in rows
        ],
        batch_size=500,
    )


def batch_customers(external_ids: set[str]):
    return (
        Customer.objects.filter(external_id__in=external_ids)
        .annotate(
            catalog_version=Subquery(CatalogVersion.objects.filter(pk=1).values("version")[:1])
        )
        .values_list("pk", "external_id", "state_version", "catalog_version")
    )


def granted(customer_ids, feature_ids, since, until) -> None:
    """None: no adding in the locking statement here (PostgreSQL's refinement)."""
    return None


def turns() -> int:
    """SQLite serialises writers: no turns to take."""
    return 0


def take_turns(customer_ids) -> None:
    """Never called: no turns (above)."""


def counters_vacuum() -> None:
    """Nothing: SQLite rewrites a row where it is, and has no vacuum to wait for."""


def vacuum_settings(on_connection) -> dict[str, str]:
    """Nothing to say: SQLite has no autovacuum of that kind."""
    return {}
