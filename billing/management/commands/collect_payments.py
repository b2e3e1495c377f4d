from django.core.management.base import BaseCommand

from billing.services.payments import payments_collect

from ._now import now_argument, now_option


class Command(BaseCommand):
    help = (
        'Retries the declined charges that are due (what beat\'s "Retry failed payments" runs) '
        "and marks past due the subscriptions with an invoice unpaid past its due date."
    )

    def add_arguments(self, parser):
        now_argument(parser, "Collect")

    def handle(self, *args, **options):
        run = payments_collect(now=now_option(options))
        self.stdout.write(
            f"Paid {len(run.paid)}, declined {len(run.declined)}, errors {len(run.errors)}; "
            f"{run.past_due} subscription(s) now past due."
        )
        for number, message in run.errors.items():
            self.stderr.write(f"{number}: {message}")
