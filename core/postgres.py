"""PostgreSQL connections: timestamps read by psycopg's own loader.

Django reads every `timestamptz` through a Python subclass of psycopg's Python loader
(`BaseTzLoader`: psycopg's Python parser, then `replace(tzinfo=...)`), which passes over the
C loader of psycopg-binary: several microseconds per value, and a consume reads several. When
the connection's time zone is UTC, psycopg's loader already answers what Django's would
(aware datetimes in `datetime.timezone.utc`), so each new connection reads timestamps with
psycopg's fastest loader instead. Any other time zone keeps Django's.
"""

import datetime as dt

from django.db.backends.signals import connection_created


class UtcTimestamptzLoader:
    """psycopg's fastest text loader of `timestamptz` (C where psycopg-binary is installed),
    with the `timezone` Django's cursor compares before it would register its own again."""

    timezone = dt.UTC
    format = 0  # text
    fastest = None  # psycopg's loader class, looked up once

    def __init__(self, oid: int, context=None):
        if UtcTimestamptzLoader.fastest is None:
            from psycopg import postgres, pq

            UtcTimestamptzLoader.fastest = postgres.adapters.get_loader(oid, pq.Format.TEXT)
        self.load = UtcTimestamptzLoader.fastest(oid, context).load


def timestamps_loader_fast(sender, connection, **kwargs) -> None:
    if connection.vendor != "postgresql" or connection.timezone is not dt.UTC:
        return
    from psycopg import postgres

    pg = connection.connection
    if pg.info.parameter_status("TimeZone") in ("UTC", "Etc/UTC"):
        pg.adapters.register_loader(postgres.types["timestamptz"].oid, UtcTimestamptzLoader)


def connect() -> None:
    connection_created.connect(timestamps_loader_fast, dispatch_uid="core.postgres.timestamps")
