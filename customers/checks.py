"""`manage.py check --database default` (and `migrate`): the PostgreSQL settings the usage
counters depend on (docs/performance.md, "Decay", and docs/deploy.md).

Every consume and batch rewrites a counter row, so the counters table makes dead row versions
as fast as usage comes in. PostgreSQL reclaims most of them in passing (HOT pruning, as each
page fills), but not those whose page other sessions had pinned at that moment: a hot
customer's row then moves to a new page, leaving index entries behind. Autovacuum clears
those; without it the table and its indexes only grow (measured: 51 to 424 pages in an hour of
this machine's tests) and each consume reads more. The migration
`usage_counter_autovacuum` makes autovacuum visit the counters every thousand dead rows;
this check says when the server would never run it."""

from django.core import checks
from django.db import connections

from .models import UsageCounter

AUTOVACUUM_OFF = (
    "PostgreSQL runs with autovacuum = off (or track_counts = off): the usage counters, "
    "rewritten by every consume, keep their dead row versions and consumes slow down as the "
    "table grows."
)
AUTOVACUUM_HINT = (
    "Turn autovacuum on (postgresql.conf: autovacuum = on, track_counts = on), or VACUUM "
    f"{UsageCounter._meta.db_table} at least every minute (docs/deploy.md, 'Database')."
)


def server_settings(alias: str) -> dict[str, str]:
    """The server's autovacuum and track_counts settings (PostgreSQL only; else empty)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'track_counts')"
        )
        return dict(cursor.fetchall())


@checks.register(checks.Tags.database)
def autovacuum_check(app_configs=None, databases=None, **kwargs):
    messages = []
    for alias in databases or ():
        found = server_settings(alias)
        if found and "off" in found.values():
            messages.append(
                checks.Warning(AUTOVACUUM_OFF, hint=AUTOVACUUM_HINT, id="entitlements.W021")
            )
    return messages
