"""Demo catalog from the cloud-storage story. Idempotent: rows are matched on their keys."""

from decimal import Decimal

from djmoney.money import Money

from .models import Feature, Plan, PlanEntitlement, TopUpPack
from .services import plan_current_version_sync

FEATURES = [
    {
        "key": "storage",
        "name": "Storage",
        "kind": "metered",
        "unit": "GB",
        "aggregation": "latest",
        "description": "Space used by stored files (the latest reported level).",
    },
    {
        "key": "data-transfer",
        "name": "Data transfer",
        "kind": "metered",
        "unit": "GB",
        "aggregation": "sum",
        "description": "Data downloaded from storage in the billing period.",
    },
    {
        "key": "file-versioning",
        "name": "File versioning",
        "kind": "boolean",
        "description": "Keep and restore earlier versions of every file.",
    },
    {
        "key": "encryption-access-controls",
        "name": "Encryption and access controls",
        "kind": "boolean",
        "description": "Customer-managed encryption keys and fine-grained access policies.",
    },
    {
        "key": "support-tier",
        "name": "Support tier",
        "kind": "config",
        "description": "The level of support included.",
    },
]

# plan key -> (fields, {feature key: entitlement values})
PLANS = {
    "personal": (
        {"name": "Personal Storage", "price": Money("10.00", "USD"), "rank": 10},
        {
            "storage": {"limit": Decimal("20"), "show_on_invoice": True},
            "data-transfer": {"limit": Decimal("50"), "show_on_invoice": True},
            "support-tier": {"value": "community"},
        },
    ),
    "basic": (
        {"name": "Basic Storage", "price": Money("50.00", "USD"), "rank": 20},
        {
            "storage": {"limit": Decimal("100"), "show_on_invoice": True},
            "data-transfer": {"limit": Decimal("200"), "show_on_invoice": True},
            "support-tier": {"value": "standard"},
        },
    ),
    "business": (
        {"name": "Business Storage", "price": Money("150.00", "USD"), "rank": 30},
        {
            "storage": {"limit": Decimal("1000"), "show_on_invoice": True},
            "data-transfer": {
                "limit": Decimal("500"),
                "enforcement": "soft",
                "overage_price": Money("0.10", "USD"),
                "show_on_invoice": True,
            },
            "file-versioning": {"enabled": True},
            "support-tier": {"value": "priority"},
        },
    ),
    "business-plus": (
        {"name": "Business Plus", "price": Money("300.00", "USD"), "rank": 40},
        {
            "storage": {"limit": Decimal("5000"), "show_on_invoice": True},
            "data-transfer": {
                "limit": Decimal("2000"),
                "enforcement": "soft",
                "overage_price": Money("0.08", "USD"),
                "show_on_invoice": True,
            },
            "file-versioning": {"enabled": True},
            "encryption-access-controls": {"enabled": True},
            "support-tier": {"value": "dedicated"},
        },
    ),
}

PLAN_DESCRIPTIONS = {
    "personal": "For one person's files.",
    "basic": "100 GB for a small team.",
    "business": "More space, 500 GB of transfer a month and file versioning.",
    "business-plus": "Everything in Business, plus encryption and access controls.",
}


def upsert(model, lookup: dict, values: dict):
    """Creates or updates one row; saves (and writes history) only when something changed."""
    obj = model.objects.filter(**lookup).first()
    created = obj is None
    if created:
        obj = model(**lookup)
    changed = created
    for name, value in values.items():
        if created or getattr(obj, name) != value:
            setattr(obj, name, value)
            changed = True
    if changed:
        obj.full_clean()
        obj.save()
    return obj


def seed_catalog() -> dict[str, Plan]:
    features = {f["key"]: upsert(Feature, {"key": f["key"]}, f) for f in FEATURES}
    plans = {}
    for key, (fields, entitlements) in PLANS.items():
        plan = upsert(
            Plan,
            {"key": key},
            {
                **fields,
                "description": PLAN_DESCRIPTIONS[key],
                "status": "active",
                "public": True,
                "interval": "month",
            },
        )
        version = plan_current_version_sync(plan=plan)
        for feature_key, values in entitlements.items():
            upsert(
                PlanEntitlement,
                {"plan": plan, "version": version, "feature": features[feature_key]},
                values,
            )
        plans[key] = plan
    pack = upsert(
        TopUpPack,
        {"key": "extra-20-gb"},
        {
            "name": "Extra 20 GB",
            "feature": features["storage"],
            "quantity": Decimal("20"),
            "price": Money("10.00", "USD"),
            "expiry": "period_end",
        },
    )
    if pack.plans.exists():
        pack.plans.clear()
    return plans
