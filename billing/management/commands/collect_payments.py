from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from billing.services.payments import payments_collect


class Command(BaseCommand):
    help = (
        'Retries the declined charges that are due (what beat\'s "Retry failed payments" runs) '
        "and marks past due the subscriptions with an invoice unpaid past its due date."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--now", help="Run as of this ISO 8601 instant (default: now), with a time zone."
        )

    def handle(self, *args, **options):
        now = None
        if options["now"]:
            now = parse_datetime(options["now"])
            if now is None or now.tzinfo is None:
                raise CommandError("--now takes an ISO 8601 datetime with a time zone.")
        run = payments_collect(now=now)
        self.stdout.write(
            f"Paid {len(run.paid)}, declined {len(run.declined)}, errors {len(run.errors)}; "
            f"{run.past_due} subscription(s) now past due."
        )
        for number, message in run.errors.items():
            self.stderr.write(f"{number}: {message}")
