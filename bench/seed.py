"""Seeds the benchmark database fast: the demo catalog, 1,000 customers on the demo plans and
1,000,000 usage events written with COPY, then the counters rebuilt from the ledger.

Run by bench/run.py with the benchmark's environment (never against your own database).
"""

import datetime as dt
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "entitlements_site.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from catalog.demo import seed_catalog  # noqa: E402
from catalog.models import Feature  # noqa: E402
from catalog.selectors import plan_version_current  # noqa: E402
from customers.models import Customer, Subscription, UsageEvent  # noqa: E402
from customers.periods import add_months  # noqa: E402
from customers.usage import usage_counters_rebuild  # noqa: E402

CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "1000"))
BIG_EVENTS = int(os.environ.get("BENCH_BIG_EVENTS", "1000000"))
SMALL_EVENTS = 1000


def external_id(i: int) -> str:
    return f"bench-{i:04d}"


def main() -> None:
    started = time.perf_counter()
    plans = list(seed_catalog().values())
    now = timezone.now()
    period_start = now - dt.timedelta(days=10)
    with transaction.atomic():
        customers = Customer.objects.bulk_create(
            [
                Customer(external_id=external_id(i), name=f"Bench customer {i}", currency="USD")
                for i in range(CUSTOMERS)
            ]
        )
        Subscription.objects.bulk_create(
            [
                Subscription(
                    customer=c,
                    # The two measured customers are on Business (a soft transfer limit).
                    plan=(plan := plans[2] if i < 2 else plans[i % len(plans)]),
                    plan_version=plan_version_current(plan=plan),
                    started_at=period_start,
                    current_period_start=period_start,
                    current_period_end=add_months(period_start, 1),
                )
                for i, c in enumerate(customers)
            ]
        )
    transfer = Feature.objects.get(key="data-transfer")
    # bench-0000 holds the million events, bench-0001 a thousand: same plan, same feature.
    _copy_events(customers[0].pk, transfer.pk, BIG_EVENTS, "big", period_start, now)
    _copy_events(customers[1].pk, transfer.pk, SMALL_EVENTS, "small", period_start, now)
    seeded = time.perf_counter()
    report = usage_counters_rebuild()
    print(
        f"seeded {CUSTOMERS} customers and {BIG_EVENTS + SMALL_EVENTS} events in "
        f"{seeded - started:.1f}s; counters rebuilt in {time.perf_counter() - seeded:.1f}s "
        f"({report.summary})",
        flush=True,
    )


def _copy_events(customer_id, feature_id, count, prefix, start, end) -> None:
    table = UsageEvent._meta.db_table
    span = (end - start).total_seconds()
    recorded = end.isoformat()
    with connection.cursor() as cursor:
        raw = cursor.connection
        columns = "customer_id, feature_id, event_id, quantity, timestamp, properties, recorded_at"
        with raw.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            buffer = io.StringIO()
            for i in range(count):
                at = start + dt.timedelta(seconds=span * i / count)
                buffer.write(
                    f"{customer_id}\t{feature_id}\t{prefix}-{i}\t0.0010\t{at.isoformat()}\t{{}}\t"
                    f"{recorded}\n"
                )
                if i % 50000 == 49999:
                    copy.write(buffer.getvalue())
                    buffer = io.StringIO()
            copy.write(buffer.getvalue())
    connection.commit() if not connection.get_autocommit() else None


if __name__ == "__main__":
    main()
