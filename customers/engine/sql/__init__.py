"""The engine's SQL behind one small interface per database: `db()` is the module of the
database in use (postgresql or sqlite), each with the same functions:

- `counters_select_for_update(ordered_keys, version_of)` -> (counters by key, versions)
- `counters_save(counters)`: write back changed counters
- `grants_lock(customer_ids, feature_ids, since, until)` -> grant rows, locked in id order
- `events_insert(items, now, immediate=)` -> {(customer id, event_id): event id} of the rows
  inserted (`immediate`: foreign keys checked by the insert, not at COMMIT)
- `draws_insert(rows)`: the draw ledger's rows (event id, grant id or None, window, units)
- `batch_customers(external_ids)` -> rows (id, external_id, state_version, catalog version)
- `counters_vacuum()`, `vacuum_settings(connection)`: VACUUM of the usage counters and the
  server's autovacuum settings (nothing on SQLite)
- `granted(...)`, `take_turns(...)`: the batch's PostgreSQL-only refinements (nothing on
  SQLite; when `granted` answers None, the batch never calls PostgreSQL's `lock_and_add`),
  and `consume_in_two_trips`: whether `consume_lock` and `consume_write` (PostgreSQL's
  consume in two round trips) exist.

SQL that both run as written is in `common`. Table names come from the models' `_meta`.
"""

from django.db import connection

from . import postgresql, sqlite
from .common import counter_values, db_decimal, db_time, unplanned, usage_snapshot

__all__ = [
    "counter_values",
    "db",
    "db_decimal",
    "db_time",
    "unplanned",
    "usage_snapshot",
]


def db():
    """The statements of the database in use."""
    return postgresql if connection.vendor == "postgresql" else sqlite
