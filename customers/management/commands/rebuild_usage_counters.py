import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from customers.models import Customer
from customers.usage import usage_counters_rebuild


class Command(BaseCommand):
    help = (
        "Recompute every usage counter from the usage events, report each counter that drifted "
        "and fix it (--dry-run: only report)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Report drift without changing anything."
        )
        parser.add_argument(
            "--customer",
            action="append",
            default=[],
            metavar="EXTERNAL_ID",
            help="Only this customer (repeatable); default every customer.",
        )
        parser.add_argument(
            "--since",
            metavar="YYYY-MM-DD",
            help="Only windows starting on or after this day (UTC); after archiving usage "
            "events, the archive's cutoff.",
        )

    def handle(self, *args, dry_run=False, customer=(), since=None, **options):
        if since:
            try:
                since = dt.datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=dt.UTC)
            except ValueError:
                raise CommandError(f"--since is a day, YYYY-MM-DD, not {since!r}.") from None
        customers = None
        if customer:
            customers = list(Customer.objects.filter(external_id__in=customer))
            unknown = set(customer) - {c.external_id for c in customers}
            if unknown:
                raise CommandError(f"Unknown customers: {', '.join(sorted(unknown))}")
        report = usage_counters_rebuild(dry_run=dry_run, customers=customers, since=since)
        for drift in report.drifts:
            self.stdout.write(f"drift: {drift}")
        style = self.style.WARNING if report.drifts else self.style.SUCCESS
        self.stdout.write(style(report.summary))
