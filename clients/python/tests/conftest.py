"""The client against the real server: pytest-django's live server on the test database
(SQLite or PostgreSQL), a runtime API key, and a small catalog made for each test."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from entitlements_client import Client
from pytest_django.live_server_helper import LiveServer

from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory, PlanFactory
from core.services import api_key_create
from customers.tests.factories import CustomerFactory, SubscriptionFactory

from .proxy import Proxy


@dataclass(frozen=True)
class Catalog:
    customer: str  # on the plan
    unsubscribed: str  # a customer with no subscription
    transfer: str  # metered, sum, hard limit 10 GB a period
    hd_video: str  # boolean, enabled in the plan
    sso: str  # boolean, not in the plan
    seats: str  # config, "priority"


@pytest.fixture
def catalog(transactional_db) -> Catalog:
    plan = PlanFactory(key="client-basic")
    transfer = FeatureFactory(key="transfer", name="Data transfer", metered=True)
    hd_video = FeatureFactory(key="hd-video", name="HD video")
    seats = FeatureFactory(key="seats", name="Seats", config=True)
    sso = FeatureFactory(key="sso", name="Single sign-on")
    PlanEntitlementFactory(plan=plan, feature=transfer, limit=Decimal("10"))
    PlanEntitlementFactory(plan=plan, feature=hd_video)
    PlanEntitlementFactory(plan=plan, feature=seats)
    customer = CustomerFactory(external_id="acme")
    SubscriptionFactory(customer=customer, plan=plan)
    CustomerFactory(external_id="walk-in")
    return Catalog("acme", "walk-in", transfer.key, hd_video.key, sso.key, seats.key)


@pytest.fixture
def api_key(transactional_db) -> str:
    """A runtime key: what an application server is given."""
    return api_key_create(name="python client tests", scope="runtime")[1]


@pytest.fixture
def server_url(live_server) -> str:
    return live_server.url


@pytest.fixture
def client(server_url, api_key):
    with Client(server_url, api_key, timeout=10, backoff=0.01) as client:
        yield client


@pytest.fixture
def proxy(server_url):
    proxy = Proxy(server_url)
    yield proxy
    proxy.stop()


@pytest.fixture
def stoppable_server(transactional_db):
    """A live server of this test's own, to stop in the middle of it. Stopping it also closes
    the connections its clients keep alive between requests, as a stopped process's are
    (Django's test server would go on answering on them)."""
    server = LiveServer("127.0.0.1:0")
    httpd, accepted = server.thread.httpd, []
    serve, stop = httpd.process_request, server.stop

    def process_request(request, client_address):
        accepted.append(request)
        serve(request, client_address)

    def stop_and_close() -> None:
        stop()
        for sock in accepted:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    httpd.process_request, server.stop = process_request, stop_and_close
    yield server
    if server.thread.is_alive():
        server.stop()


@pytest.fixture
def reservations(server_url, api_key, catalog):
    """The server's reservations endpoint (DESIGN.md "Reservations"), probed with a hold of
    its own that is released at once: a server without it fails these tests, never skips."""
    url = (
        f"{server_url}/api/v1/customers/{catalog.customer}/entitlements/{catalog.transfer}"
        "/reservations"
    )
    headers = {"Authorization": f"Bearer {api_key}"}
    response = httpx.post(
        url,
        json={"reservation_id": "probe", "quantity": "0.0001", "ttl_seconds": 1},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    assert httpx.delete(f"{url}/probe", headers=headers).status_code == 200
