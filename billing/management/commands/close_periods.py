from django.core.management.base import BaseCommand, CommandError

from billing.services.period_close import periods_close

from ._now import now_argument, now_option


class Command(BaseCommand):
    help = (
        "Closes every ended billing period: issues the next plan invoices (with entitlement and "
        "overage lines), applies scheduled downgrades and ends cancelled subscriptions. Safe to "
        "run twice."
    )

    def add_arguments(self, parser):
        now_argument(parser, "Close")

    def handle(self, *args, **options):
        result = periods_close(now=now_option(options))
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
