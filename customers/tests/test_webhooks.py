"""Webhooks: threshold and entitlement events POSTed as signed JSON to a real HTTP receiver on
127.0.0.1, each event once, retried until it answers 2xx."""

import hashlib
import hmac
import time
from decimal import Decimal

import pytest
from djmoney.money import Money

from customers import tasks, webhooks
from customers.engine import entitlement_consume
from customers.models import (
    EntitlementOverride,
    Grant,
    GrantSource,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)
from customers.tests.notification_helpers import receiver_start, storage_given

pytestmark = pytest.mark.django_db

SECRET = "whsec_test-secret"


@pytest.fixture
def receiver():
    receiver = receiver_start(SECRET)
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def endpoint_for(receiver, **fields) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(url=receiver.url, secret=SECRET, **fields)


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks):
    return lambda: django_capture_on_commit_callbacks(execute=True)


def test_a_threshold_crossing_is_posted_once_signed(receiver, on_commit):
    storage = storage_given()
    endpoint_for(receiver)
    with on_commit():
        entitlement_consume(storage.customer, storage.feature.key, "79", "e1")
    with on_commit():
        entitlement_consume(storage.customer, storage.feature.key, "2", "e2")
    with on_commit():
        entitlement_consume(storage.customer, storage.feature.key, "1", "e3")

    events = receiver.events("usage.threshold_crossed")
    assert len(events) == 1
    assert all(r["valid"] for r in receiver.received)
    event = events[0]
    assert event["id"].startswith("evt_")
    assert event["data"] | {"notification_id": None, "period_start": None, "resets_at": None} == {
        "customer": storage.customer.external_id,
        "feature": storage.feature.key,
        "threshold": 80,
        "percent_used": "81",
        "usage": "81",
        "limit": "100",
        "granted": "0",
        "capacity": "100",
        "balance": "19",
        "unit": "GB",
        "period_start": None,
        "resets_at": None,
        "notification_id": None,
    }
    headers = receiver.received[-1]["headers"]
    assert headers["X-Entitlements-Event"] == "usage.threshold_crossed"
    assert headers["X-Entitlements-Signature"].startswith("sha256=")
    assert abs(int(headers["X-Entitlements-Timestamp"]) - time.time()) < 60
    delivery = WebhookDelivery.objects.get(event_type="usage.threshold_crossed")
    assert (delivery.status, delivery.response_code, delivery.attempts) == ("delivered", 200, 1)

    # The sweep never posts a delivered event again
    assert tasks.webhook_deliveries_sweep.delay(3600).get() == 0
    assert len(receiver.received) == 1


def test_plan_entitlement_override_and_grant_changes_are_posted(receiver, on_commit):
    storage = storage_given()
    endpoint_for(receiver)

    with on_commit():
        storage.entitlement.limit = Decimal("200")
        storage.entitlement.save()
    with on_commit():
        override = EntitlementOverride.objects.create(
            customer=storage.customer,
            feature=storage.feature,
            limit=Decimal("500"),
            enforcement="soft",
            overage_price=Money("0.10", "USD"),
            reason="Enterprise deal",
        )
    with on_commit():
        Grant.objects.create(
            customer=storage.customer,
            feature=storage.feature,
            quantity=Decimal("20"),
            source=GrantSource.TOPUP,
        )
    with on_commit():
        override.delete()

    events = receiver.events("entitlement.updated")
    assert all(r["valid"] for r in receiver.received)
    assert [(e["data"]["source"], e["data"]["action"]) for e in events] == [
        ("plan", "updated"),
        ("override", "created"),
        ("grant", "created"),
        ("override", "deleted"),
    ]
    plan_event, override_event, grant_event, _ = (e["data"] for e in events)
    assert plan_event["plan"] == storage.plan.key
    assert plan_event["feature"] == storage.feature.key
    assert plan_event["values"]["limit"] == "200"
    assert override_event["customer"] == storage.customer.external_id
    assert override_event["values"]["limit"] == "500"
    assert override_event["values"]["overage_price"] == {"amount": "0.10", "currency": "USD"}
    assert grant_event["values"]["quantity"] == "20"
    assert len({e["id"] for e in events}) == 4


def test_endpoints_get_only_the_events_they_want(receiver, on_commit):
    endpoint_for(receiver, event_types=["usage.threshold_crossed"])
    endpoint_for(receiver, active=False)
    storage = storage_given()
    with on_commit():
        storage.entitlement.notify_at = [50]
        storage.entitlement.save()
    with on_commit():
        entitlement_consume(storage.customer, storage.feature.key, "60", "e1")

    assert [e["type"] for e in receiver.events()] == ["usage.threshold_crossed"]


def test_a_failing_receiver_is_retried_by_the_sweep_and_sees_the_event_once(receiver, on_commit):
    # Given the receiver answers 500
    storage = storage_given()
    endpoint_for(receiver)
    receiver.status = 500
    with on_commit():
        entitlement_consume(storage.customer, storage.feature.key, "90", "e1")

    delivery = WebhookDelivery.objects.get(event_type="usage.threshold_crossed")
    assert (delivery.status, delivery.response_code, delivery.attempts) == ("pending", 500, 1)
    assert delivery.last_error == "HTTP 500 Internal Server Error"

    # When it recovers, the sweep delivers it once
    receiver.status = 200
    assert tasks.webhook_deliveries_sweep.delay().get() == 0  # retried in two minutes
    assert tasks.webhook_deliveries_sweep.delay(120).get() == 1
    assert tasks.webhook_deliveries_sweep.delay(3600).get() == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.response_code, delivery.attempts) == ("delivered", 200, 2)
    ids = [e["id"] for e in receiver.events("usage.threshold_crossed")]
    assert len(ids) == 2 and len(set(ids)) == 1  # the 500 and the delivery: one event
    assert len([r for r in receiver.received if r["valid"]]) == 2


def test_an_unreachable_endpoint_is_recorded_and_not_a_failed_request(on_commit, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    storage = storage_given()
    WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hooks", secret=SECRET)
    with on_commit():
        result = entitlement_consume(storage.customer, storage.feature.key, "90", "e1")

    assert result.allowed
    delivery = WebhookDelivery.objects.get(event_type="usage.threshold_crossed")
    assert delivery.status == WebhookDeliveryStatus.PENDING
    assert delivery.response_code is None
    assert "Connection refused" in delivery.last_error


def test_a_delivered_event_is_never_posted_again(receiver, on_commit):
    storage = storage_given()
    endpoint_for(receiver)
    with on_commit():
        entitlement_consume(storage.customer, storage.feature.key, "90", "e1")
    delivery = WebhookDelivery.objects.get(event_type="usage.threshold_crossed")
    posted = len(receiver.received)

    assert tasks.webhook_deliver(delivery.pk) is False
    assert len(receiver.received) == posted


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"id":"evt_1"}'
    signature = webhooks.webhook_signature("s3cret", 1700000000, body)
    expected = hmac.new(b"s3cret", b'1700000000.{"id":"evt_1"}', hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    verify = webhooks.webhook_signature_verify
    ok = {"secret": "s3cret", "timestamp": "1700000000", "body": body, "signature": signature}
    assert verify(**ok, now=1700000100)
    assert not verify(**ok, now=1700000000 + 301)  # too old: a replay
    assert not verify(**(ok | {"body": b'{"id":"evt_2"}'}), now=1700000100)
    assert not verify(**(ok | {"secret": "other"}), now=1700000100)
    assert not verify(**(ok | {"timestamp": "soon"}), now=1700000100)


def test_no_endpoint_no_delivery():
    storage = storage_given()
    Grant.objects.create(
        customer=storage.customer,
        feature=storage.feature,
        quantity=Decimal("1"),
        source=GrantSource.MANUAL,
    )
    assert WebhookDelivery.objects.count() == 0
