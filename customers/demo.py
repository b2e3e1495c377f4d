"""Demo customers of the cloud-storage story, on top of catalog.demo's plans.

Eight customers across the four plans, with a month of daily usage (storage levels and data
transfer): Northwind Traders on an enterprise deal (2 TB of storage on Business), Maple & Oak
Bakery with a 20 GB top-up, Summit Outdoor past its soft transfer limit, and Bluebird Design
Studio at 82% of its storage, the customer the demo login `customer` sees.

Idempotent: customers are matched on their external ids, a subscription, override or top-up is
made only when missing, and usage events have one id per customer, feature and day, so a second
run records nothing new (run on a later day, it adds the days in between).
"""

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal

from django.utils import timezone

from catalog.models import Feature, Plan, TopUpPack

from . import engine, services
from .models import SUBSCRIPTION_CURRENT, Customer, GrantSource
from .periods import add_months

DAYS = 30  # of usage, ending yesterday


@dataclass(frozen=True)
class DemoCustomer:
    external_id: str
    name: str
    email: str
    plan: str
    subscribed: tuple[int, int]  # (months ago, days into the current period): before DAYS
    storage_gb: tuple[str, str]  # level a month ago, level yesterday
    transfer_gb_per_day: str


CUSTOMERS = [
    DemoCustomer(
        "northwind", "Northwind Traders", "it@northwind.example", "business", (7, 12),
        ("1150", "1430"), "12",
    ),
    DemoCustomer(
        "bluebird-design", "Bluebird Design Studio", "hello@bluebird.example", "basic", (3, 20),
        ("61", "82"), "4",
    ),
    DemoCustomer(
        "maple-oak-bakery", "Maple & Oak Bakery", "orders@mapleandoak.example", "basic", (2, 14),
        ("74", "92"), "3",
    ),
    DemoCustomer(
        "harbor-analytics", "Harbor Analytics", "ops@harbor-analytics.example", "business-plus",
        (5, 25), ("2100", "2600"), "45",
    ),
    DemoCustomer(
        "summit-outdoor", "Summit Outdoor Co.", "web@summit-outdoor.example", "business", (4, 27),
        ("420", "510"), "24",
    ),
    DemoCustomer(
        "quillfeather-press", "Quillfeather Press", "studio@quillfeather.example", "basic", (2, 9),
        ("30", "38"), "5",
    ),
    DemoCustomer(
        "lina-park", "Lina Park", "lina.park@mail.example", "personal", (1, 18), ("6", "9"), "1.2",
    ),
    DemoCustomer(
        "tomas-rivera", "Tomás Rivera", "tomas@rivera.example", "personal", (1, 4), ("11", "13"),
        "0.8",
    ),
]  # fmt: skip

LOGIN_CUSTOMER = "bluebird-design"  # near 80% of its storage: the dashboard warns
ENTERPRISE_DEAL = ("northwind", "storage", Decimal("2000"), "Enterprise agreement NW-2025-07: 2 TB")
TOPUP = ("maple-oak-bakery", "extra-20-gb")


def seed_customers(*, login=None, created_by=None) -> list[Customer]:
    """Creates what is missing of the demo customers and their month of usage; links `login`
    (a user) to the customer near its storage cap. Returns the demo customers."""
    now = timezone.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    plans = {p.key: p for p in Plan.objects.filter(key__in={c.plan for c in CUSTOMERS})}
    customers = {}
    for demo in CUSTOMERS:
        customer = _customer(demo)
        if not customer.subscriptions.filter(status__in=SUBSCRIPTION_CURRENT).exists():
            months, days = demo.subscribed
            started_at = add_months(today - dt.timedelta(days=days), -months)
            _subscribe(customer, plans[demo.plan], started_at)
        customers[demo.external_id] = customer

    external_id, feature_key, limit, reason = ENTERPRISE_DEAL
    storage = Feature.objects.get(key=feature_key)
    if not customers[external_id].overrides.filter(feature=storage).exists():
        services.override_create(
            customer=customers[external_id],
            feature=storage,
            reason=reason,
            created_by=created_by,
            limit=limit,
            show_on_invoice=True,
        )

    external_id, pack_key = TOPUP
    pack = TopUpPack.objects.get(key=pack_key)
    bakery = customers[external_id]
    if not bakery.grants.filter(topup_pack=pack).exists():
        # Bought halfway through the current period, after the 80% alert.
        subscription = services.subscription_active(bakery)
        start = subscription.current_period_start
        bought = (start + (now - start) / 2).replace(second=0, microsecond=0)
        services.grant_create(
            customer=bakery,
            feature=pack.feature,
            quantity=pack.quantity,
            source=GrantSource.TOPUP,
            reason=f"Bought {pack.name}",
            effective_at=bought,
            expires_at=services.grant_expiry_for(
                pack, at=bought, period_end=subscription.current_period_end
            ),
            topup_pack=pack,
        )

    for demo in CUSTOMERS:
        engine.usage_record_batch(_month_of_usage(demo, today))
    if login is not None:
        services.customer_user_link(user=login, customer=customers[LOGIN_CUSTOMER])
    return list(customers.values())


def _customer(demo: DemoCustomer) -> Customer:
    customer = Customer.objects.filter(external_id=demo.external_id).first()
    if customer is None:
        return services.customer_create(
            external_id=demo.external_id, name=demo.name, email=demo.email, currency="USD"
        )
    changed = {
        name: value
        for name, value in (("name", demo.name), ("email", demo.email))
        if getattr(customer, name) != value
    }
    return services.customer_update(customer=customer, **changed) if changed else customer


def _subscribe(customer: Customer, plan: Plan, started_at: dt.datetime) -> None:
    """Subscribed in the past: the periods since are rolled forward to the current one."""
    subscription = services.subscription_start(customer=customer, plan=plan, started_at=started_at)
    while subscription.current_period_end <= timezone.now():
        subscription = services.subscription_roll_period(subscription=subscription)


def _month_of_usage(demo: DemoCustomer, today: dt.datetime) -> list[dict]:
    """One storage level and one day's data transfer for each of the last DAYS days, at noon.
    The figures vary from day to day, the same on every run."""
    rnd = random.Random(demo.external_id)
    first, last = (Decimal(v) for v in demo.storage_gb)
    per_day = Decimal(demo.transfer_gb_per_day)
    events = []
    for days_ago in range(DAYS, 0, -1):
        at = today - dt.timedelta(days=days_ago) + dt.timedelta(hours=12)
        progress = Decimal(DAYS - days_ago) / (DAYS - 1)
        wobble = Decimal(rnd.randint(-20, 20)) / 100 if days_ago > 1 else Decimal(0)
        level = first + (last - first) * progress + wobble
        transfer = per_day * Decimal(rnd.randint(40, 160)) / 100
        for feature, quantity in (("storage", level), ("data-transfer", transfer)):
            events.append(
                {
                    "event_id": f"demo-{feature}-{at:%Y-%m-%d}",
                    "customer": demo.external_id,
                    "feature": feature,
                    "quantity": str(quantity.quantize(Decimal("0.01"))),
                    "timestamp": at.isoformat(),
                    "properties": {"source": "demo"},
                }
            )
    return events
