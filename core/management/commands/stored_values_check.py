"""Lists the rows stored before the decimal bounds that a read can no longer load (see
core/stored_values.py); exits 1 when there are any."""

from django.core.management.base import BaseCommand, CommandError

from core.stored_values import stored_values_out_of_bounds


class Command(BaseCommand):
    help = "List stored decimals outside the bounds (15 digits, 4 after the point)."

    def add_arguments(self, parser):
        parser.add_argument("--database", default="default")

    def handle(self, *args, database: str, **options):
        found = stored_values_out_of_bounds(using=database)
        for row in found:
            self.stdout.write(f"{row.model} pk={row.pk} {row.field}={row.value}")
        if found:
            raise CommandError(
                f"{len(found)} stored value(s) are outside the bounds. Correct each with SQL (their"
                " rows cannot be loaded until then) to a decimal of at most 15 digits, 4 after"
                " the point; then run `python manage.py migrate`."
            )
        self.stdout.write("Every stored decimal is within the bounds.")
