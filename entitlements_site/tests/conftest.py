from decimal import Decimal

import pytest
from django.core.servers import basehttp
from djmoney.money import Money
from rest_framework.test import APIClient

from catalog import services as catalog_services
from core.services import api_key_create
from customers import services as customer_services

# The live test server accepts bursts of parallel connections (socketserver's backlog is 5).
basehttp.WSGIServer.request_queue_size = 256


@pytest.fixture
def api_key(db):
    _, key = api_key_create(name="tests")
    return key


@pytest.fixture
def api(api_key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return client


@pytest.fixture
def features(db):
    return {
        "storage": catalog_services.feature_create(
            key="storage", name="Storage", kind="metered", unit="GB", aggregation="latest"
        ),
        "transfer": catalog_services.feature_create(
            key="data-transfer", name="Data transfer", kind="metered", unit="GB"
        ),
        "versioning": catalog_services.feature_create(
            key="file-versioning", name="File versioning", kind="boolean"
        ),
        "tier": catalog_services.feature_create(
            key="support-tier", name="Support tier", kind="config"
        ),
    }


@pytest.fixture
def plan(features):
    return catalog_services.plan_create(
        key="basic",
        name="Basic Storage",
        price=Money("50.00", "USD"),
        status="active",
        rank=20,
        entitlements=[
            {"feature": features["storage"], "limit": Decimal("100"), "show_on_invoice": True},
            {"feature": features["transfer"], "limit": Decimal("20")},
            {"feature": features["versioning"], "enabled": True},
            {"feature": features["tier"], "value": "standard"},
        ],
    )


@pytest.fixture
def customer(plan):
    customer = customer_services.customer_create(
        external_id="acme", name="Acme Corp", email="ops@acme.test"
    )
    customer_services.subscription_start(customer=customer, plan=plan)
    return customer
