"""Timestamps read from PostgreSQL by psycopg's own loader (core/postgres.py): the same values
Django's loader gives, aware and in UTC, at the speed of psycopg-binary's C parser."""

import datetime as dt

import pytest
from django.db import connection

from core.postgres import UtcTimestamptzLoader
from customers.models import UsageEvent
from customers.tests.factories import CustomerFactory, FeatureFactory

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's loaders"),
]


def _loader(cursor):
    return cursor.cursor._tx.get_loader(cursor.cursor.adapters.types["timestamptz"].oid, 0)


def test_timestamps_read_back_as_django_reads_them():
    # Given instants with and without microseconds, far from now and near the epoch
    customer, feature = CustomerFactory(), FeatureFactory(kind="metered")
    instants = [
        dt.datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=dt.UTC),
        dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 4, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    ]
    for number, instant in enumerate(instants):
        UsageEvent.objects.create(customer=customer, feature=feature, event_id=f"t-{number}",
                                  quantity=1, timestamp=instant)  # fmt: skip

    # When they are read back through the ORM and through a raw cursor
    read = list(UsageEvent.objects.order_by("event_id").values_list("timestamp", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("SELECT '2026-06-01 12:00:00.5+02'::timestamptz, NULL::timestamptz")
        raw = cursor.fetchone()
        loader = _loader(cursor)

    # Then each is the same instant, aware, in UTC; NULL stays None
    assert read == instants
    assert all(value.tzinfo is dt.UTC for value in read)
    assert raw == (dt.datetime(2026, 6, 1, 10, 0, 0, 500000, tzinfo=dt.UTC), None)
    assert raw[0].tzinfo is dt.UTC
    # by psycopg's own loader (C with psycopg-binary), not Django's Python subclass
    assert isinstance(loader, UtcTimestamptzLoader)
    assert type(loader.load.__self__).__module__ != "django.db.backends.postgresql.psycopg_any"
