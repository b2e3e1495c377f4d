"""The engine's exactness over HTTP: parallel requests against a live server on PostgreSQL."""

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from customers.models import UsageCounter, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)


def _post(url: str, key: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture
def postgres_only():
    if connection.vendor == "sqlite":
        pytest.skip("Concurrency is proven on PostgreSQL (SQLite serialises all writers).")


def test_fifty_parallel_consumes_against_a_balance_of_twenty(
    postgres_only, live_server, api_key, customer
):
    # Given a hard limit of 20 GB of data transfer, nothing used
    url = f"{live_server.url}/api/v1/customers/acme/entitlements/data-transfer/consume"
    barrier = threading.Barrier(50)

    def one(i: int) -> bool:
        barrier.wait(timeout=30)
        try:
            return _post(url, api_key, {"quantity": "1", "event_id": f"p-{i}"})["allowed"]
        finally:
            connection.close()

    # When 50 requests of 1 GB arrive at once
    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(one, range(50)))

    # Then exactly 20 are allowed, 20 events recorded, usage 20
    assert outcomes.count(True) == 20
    assert UsageEvent.objects.count() == 20
    assert UsageCounter.objects.get(window="billing_period").used == 20


def test_parallel_batches_with_the_same_events_count_each_once(
    postgres_only, live_server, api_key, customer
):
    events = [
        {"event_id": f"e-{i}", "customer": "acme", "feature": "data-transfer", "quantity": "1"}
        for i in range(100)
    ]
    barrier = threading.Barrier(8)

    def one(_):
        barrier.wait(timeout=30)
        try:
            return _post(f"{live_server.url}/api/v1/usage", api_key, {"events": events})
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))

    assert sum(r["accepted"] for r in results) == 100
    assert sum(r["duplicates"] for r in results) == 700
    assert UsageEvent.objects.count() == 100
    assert UsageCounter.objects.get(window="billing_period").used == 100
