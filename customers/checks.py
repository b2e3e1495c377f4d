"""The PostgreSQL settings the usage counters depend on (docs/performance.md, "Decay", and
docs/deploy.md, "Database settings"): `manage.py check --database default` (and `migrate`)
warns when the server runs without autovacuum, and the beat's `usage_counters_vacuum` (its
schedule: migration 0019) then vacuums the counters itself every minute.

Every consume and batch rewrites a counter row, so the counters table makes dead row versions
as fast as usage comes in. PostgreSQL reclaims most of them in passing (HOT pruning, as each
page fills), but not those whose page other sessions had pinned at that moment: a hot
customer's row then moves to a new page, leaving its old versions and index entries behind
(measured: 1.4% of the updates of one row by 8 concurrent writers; the table grew from 51 to
218 pages over 133,000 updates). Vacuum clears them; without it the table only grows."""

from django.core import checks
from django.db import connections

from .engine import sql
from .models import UsageCounter

AUTOVACUUM_OFF = (
    "PostgreSQL runs with autovacuum = off (or track_counts = off): the usage counters, "
    "rewritten by every consume, keep their dead row versions and consumes slow down as the "
    "table grows."
)
AUTOVACUUM_HINT = (
    "Turn autovacuum on (postgresql.conf: autovacuum = on, track_counts = on), or keep beat "
    f"running: its usage_counters_vacuum then runs VACUUM {UsageCounter._meta.db_table} every "
    "minute (docs/deploy.md, 'Database settings')."
)


def server_settings(alias: str) -> dict[str, str]:
    """The server's autovacuum and track_counts settings (PostgreSQL only; else empty)."""
    connection = connections[alias]
    vendor = sql.postgresql if connection.vendor == "postgresql" else sql.sqlite
    return vendor.vacuum_settings(connection)


@checks.register(checks.Tags.database)
def autovacuum_check(app_configs=None, databases=None, **kwargs):
    messages = []
    for alias in databases or ():
        if autovacuum_off(alias):
            messages.append(
                checks.Warning(AUTOVACUUM_OFF, hint=AUTOVACUUM_HINT, id="entitlements.W021")
            )
    return messages


def autovacuum_off(alias: str = "default") -> bool:
    return "off" in server_settings(alias).values()


def usage_counters_vacuum() -> bool:
    """VACUUM of the usage counters when the server will not run it (autovacuum off); answers
    whether it ran. Cheap: one row per customer, feature and counted window."""
    if not autovacuum_off():
        return False
    sql.db().counters_vacuum()
    return True
