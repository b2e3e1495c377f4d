from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from billing.services.period_close import periods_close


class Command(BaseCommand):
    help = (
        "Closes every ended billing period: issues the next plan invoices (with entitlement and "
        "overage lines), applies scheduled downgrades and ends cancelled subscriptions. Safe to "
        "run twice."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--now",
            help="Close as of this ISO 8601 instant (default: now), e.g. 2026-03-01T00:00:00Z.",
        )

    def handle(self, *args, **options):
        now = None
        if options["now"]:
            now = parse_datetime(options["now"])
            if now is None or now.tzinfo is None:
                raise CommandError("--now takes an ISO 8601 datetime with a time zone.")
        result = periods_close(now=now)
        self.stdout.write(
            f"Closed {result.periods_closed} period(s), ended {result.subscriptions_ended} "
            f"subscription(s), issued {len(result.invoices)} invoice(s)"
            + (f": {', '.join(result.invoices)}" if result.invoices else "")
            + "."
        )
        for pk, message in result.failed.items():
            self.stderr.write(f"Subscription {pk} failed: {message}")
        if result.failed:
            raise CommandError(f"{len(result.failed)} subscription(s) could not be closed.")
