from django.core.management.base import BaseCommand

from entitlements_site.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key. The key is printed once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name", help="What uses the key, e.g. 'billing-service'.")

    def handle(self, *args, name, **options):
        api_key, key = api_key_create(name=name)
        self.stderr.write(f"Created API key {api_key.name!r} ({api_key.prefix}…). Store it now:")
        self.stdout.write(key)
