"""SQL that both databases run as written (quoting and adapting through Django's connection),
and the reading back of raw rows (PostgreSQL answers Decimals and aware datetimes, SQLite
ints, floats, strings and naive datetimes). Table names come from the models' `_meta`."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db import connection
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from catalog.models import CatalogVersion
from core.errors import NotFound

from ...models import (
    Customer,
    Grant,
    Reservation,
    ReservationStatus,
    UsageCounter,
    UsageEvent,
)
from ...snapshots import CounterRow, GrantRow, HeldRow, Snapshot


def unplanned(value) -> RawSQL:
    """`value` as a scalar subquery, which the planner plans for any value: a lookup by the
    unique (customer, event_id) index then costs one row whatever its statistics say of that
    customer. With the value itself, PostgreSQL may serve the lookup from the (customer,
    feature, time) index instead, filtering the customer's events one by one, when its
    statistics still take that customer for a small one (12 ms for a replay on a customer
    grown to 50,000 events since the table's last ANALYZE; it grows with the customer)."""
    return RawSQL("SELECT %s", (value,))


def usage_snapshot(customer_id: int, feature_id: int | None, at: dt.datetime) -> Snapshot:
    """One query: the customer's state version and the catalog's, the usage counters of every
    window containing `at`, the grants in force at `at` (of one feature, or all), when the
    next grant comes into force and the reservations held at `at` (summed here, per feature,
    exactly on both databases). Raises NotFound when the customer does not exist."""
    quote = connection.ops.quote_name
    counter, grant = UsageCounter._meta.db_table, Grant._meta.db_table
    reservation = Reservation._meta.db_table
    stamp = connection.ops.adapt_datetimefield_value(at)
    feature_filter = " AND feature_id = %s" if feature_id is not None else ""
    feature_param = [feature_id] if feature_id is not None else []
    sql = f"""
        SELECT 0, state_version, (SELECT version FROM {CatalogVersion._meta.db_table}
                                  WHERE id = 1), NULL, NULL, NULL, NULL, NULL, NULL, NULL
          FROM {Customer._meta.db_table} WHERE id = %s
        UNION ALL
        SELECT 1, id, feature_id, {quote("window")}, start, {quote("end")}, used, drawn, level,
               level_at
          FROM {counter} WHERE customer_id = %s{feature_filter} AND start <= %s
               AND {quote("end")} > %s
        UNION ALL
        SELECT 2, id, feature_id, NULL, effective_at, expires_at, quantity, consumed, NULL,
               voided_at
          FROM {grant} WHERE customer_id = %s{feature_filter} AND effective_at <= %s
               AND (expires_at IS NULL OR expires_at > %s)
               AND (voided_at IS NULL OR voided_at > %s)
        UNION ALL
        SELECT 3, NULL, NULL, NULL, MIN(effective_at), NULL, NULL, NULL, NULL, NULL
          FROM {grant} WHERE customer_id = %s{feature_filter} AND effective_at > %s
        UNION ALL
        SELECT 4, NULL, feature_id, NULL, expires_at, NULL, quantity, NULL, NULL, NULL
          FROM {reservation} WHERE customer_id = %s{feature_filter} AND status = %s
               AND expires_at > %s
    """
    params = [customer_id, customer_id, *feature_param, stamp, stamp]
    params += [customer_id, *feature_param, stamp, stamp, stamp]
    params += [customer_id, *feature_param, stamp]
    params += [customer_id, *feature_param, ReservationStatus.HELD.value, stamp]
    version, counters, grants, next_grant_at, held = None, [], [], None, {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    for kind, pk, feature, window, start, end, a, b, level, stamp_at in rows:
        if kind == 0:
            version = (int(pk), int(feature or 0))
        elif kind == 1:
            counters.append(
                CounterRow(
                    pk,
                    customer_id,
                    feature,
                    window,
                    db_time(start),
                    db_time(end),
                    db_decimal(a),
                    db_decimal(b),
                    None if level is None else db_decimal(level),
                    db_time(stamp_at),
                )  # fmt: skip
            )
        elif kind == 2:
            grants.append(
                GrantRow(
                    pk,
                    customer_id,
                    feature,
                    db_time(start),
                    db_time(end),
                    db_decimal(a),
                    db_decimal(b),
                    db_time(stamp_at),
                )  # fmt: skip
            )
        elif kind == 3:
            next_grant_at = db_time(start)
        else:
            held_add(held, feature, db_decimal(a), db_time(start))
    if version is None:
        raise NotFound("No such customer.", code="customer_not_found")
    return Snapshot(version, counters, grants, next_grant_at, list(held.values()))


def held_add(held: dict[int, HeldRow], feature_id: int, quantity: Decimal, expires_at) -> None:
    """Adds one held reservation to its feature's sum (Python's Decimals: SQLite's SUM of
    decimals would be a float's)."""
    row = held.get(feature_id)
    if row is None:
        held[feature_id] = HeldRow(feature_id, quantity, 1, expires_at)
    else:
        row.quantity += quantity
        row.count += 1
        row.expires_at = min(row.expires_at, expires_at)


FOUR_PLACES = Decimal("0.0001")


def counter_from_row(row) -> CounterRow:
    """A counter from (id, customer, feature, window, start, end, used, drawn, level, level_at)
    as raw SQL answers them on either database."""
    pk, customer_id, feature_id, window, start, end, used, drawn, level, level_at = row
    return CounterRow(
        pk, customer_id, feature_id, window, db_time(start), db_time(end), db_decimal(used),
        db_decimal(drawn), None if level is None else db_decimal(level), db_time(level_at),
    )  # fmt: skip


def db_decimal(value) -> Decimal:
    # PostgreSQL answers Decimals; SQLite answers ints, floats or strings.
    return value if isinstance(value, Decimal) else Decimal(str(value)).quantize(FOUR_PLACES)


def db_time(value) -> dt.datetime | None:
    # PostgreSQL answers aware datetimes; SQLite naive ones (UTC) or strings.
    if value is None:
        return None
    stamp = value if isinstance(value, dt.datetime) else parse_datetime(str(value))
    return stamp.replace(tzinfo=dt.UTC) if timezone.is_naive(stamp) else stamp


def db_param_time(value: dt.datetime):
    return connection.ops.adapt_datetimefield_value(value)


COUNTER_VALUES = ("used", "drawn", "level", "level_at")


def counter_values(counter: CounterRow) -> tuple:
    return (counter.used, counter.drawn, counter.level, counter.level_at)


GRANT_ROW = ("pk", "customer_id", "feature_id", "effective_at", "expires_at", "quantity",
             "consumed", "voided_at")  # fmt: skip


def versions_sql(version_of: int | None) -> tuple[str, list]:
    """Two select-list columns: customer `version_of`'s state version and the catalog's
    version (NULL, NULL without a customer), with their parameters."""
    if version_of is None:
        return "NULL, NULL", []
    quote = connection.ops.quote_name
    return (
        f"(SELECT state_version FROM {quote(Customer._meta.db_table)} WHERE id = %s), "
        f"(SELECT version FROM {quote(CatalogVersion._meta.db_table)} WHERE id = 1)",
        [version_of],
    )


def event_columns() -> tuple[list, str, str, str]:
    """UsageEvent's inserted fields, their quoted columns, its quoted table and id column."""
    quote = connection.ops.quote_name
    fields = [UsageEvent._meta.get_field(n) for n in UsageEvent.EVENT_COLUMNS]
    columns = ", ".join(quote(f.column) for f in fields)
    return fields, columns, quote(UsageEvent._meta.db_table), quote(UsageEvent._meta.pk.column)
