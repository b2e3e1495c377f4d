from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from catalog.demo import seed_catalog
from core.roles import PRODUCT_MANAGERS, SUPPORT
from customers.demo import seed_customers

# username -> (password, first name, staff group or None)
DEMO_USERS = {
    "pm": ("pm-demo", "Priya", PRODUCT_MANAGERS),
    "support": ("support-demo", "Sam", SUPPORT),
    "customer": ("customer-demo", "Casey", None),
}


class Command(BaseCommand):
    help = "Load the demo catalog, customers and logins. Safe to run again: it converges."

    @transaction.atomic
    def handle(self, *args, **options):
        plans = seed_catalog()
        users = {}
        User = get_user_model()
        for username, (password, first_name, group) in DEMO_USERS.items():
            user = User.objects.filter(username=username).first() or User(username=username)
            user.first_name = first_name
            user.email = f"{username}@example.com"
            user.is_staff = group is not None
            user.set_password(password)
            user.save()
            if group:
                user.groups.set([Group.objects.get(name=group)])
            users[username] = user
        customers = seed_customers(login=users["customer"], created_by=users["pm"])
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data ready: {len(plans)} plans, {len(customers)} customers. Logins: "
                + ", ".join(f"{u} / {p}" for u, (p, _, _) in DEMO_USERS.items())
            )
        )
