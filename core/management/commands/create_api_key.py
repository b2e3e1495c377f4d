from django.core.management.base import BaseCommand

from core.models import ApiScope
from core.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key. The key is printed once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name", help="What uses the key, e.g. 'billing-service'.")
        parser.add_argument(
            "--scope",
            choices=ApiScope.values,
            default=ApiScope.MANAGEMENT,
            help="runtime: check, consume and report usage (for application servers); read:"
            " every GET; management: everything (the default).",
        )

    def handle(self, *args, name, scope, **options):
        api_key, key = api_key_create(name=name, scope=scope)
        self.stderr.write(
            f"Created {api_key.scope} API key {api_key.name!r} ({api_key.prefix}…). Store it now:"
        )
        self.stdout.write(key)
