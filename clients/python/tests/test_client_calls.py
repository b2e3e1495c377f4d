"""Every call of `Client` against the real server: what it answers, typed (Decimal, aware
datetime), and how bad input and the server's 4xx reach the caller."""

import datetime as dt
from decimal import Decimal

import pytest
from entitlements_client import (
    BatchResult,
    Client,
    Decision,
    Entitlement,
    EntitlementsError,
)
from entitlements_client import (
    UsageEvent as ClientUsageEvent,
)

from customers.models import UsageEvent

from .proxy import Proxy


def test_check_answers_a_metered_entitlement_with_decimals_and_aware_times(client, catalog):
    e = client.check(catalog.customer, catalog.transfer)

    assert isinstance(e, Entitlement)
    assert (e.feature, e.kind, e.has_access, e.reason) == ("transfer", "metered", True, None)
    assert (e.limit, e.usage, e.balance, e.granted) == (Decimal("10"), 0, Decimal("10"), 0)
    assert all(isinstance(v, Decimal) for v in (e.limit, e.usage, e.balance, e.overage))
    assert (e.enforcement, e.source, e.unlimited) == ("hard", "plan", False)
    assert e.period_start.tzinfo is not None and e.period_end.tzinfo is not None
    assert e.period_start <= dt.datetime.now(dt.UTC) < e.period_end
    assert e.resets_at == e.period_end


def test_check_answers_gates_config_values_and_no_access(client, catalog):
    assert client.check(catalog.customer, catalog.hd_video).has_access is True
    assert client.check(catalog.customer, catalog.seats).value == "priority"

    sso = client.check(catalog.customer, catalog.sso)
    assert (sso.has_access, sso.source, sso.reason) == (False, None, "no_access")
    unsubscribed = client.check(catalog.unsubscribed, catalog.hd_video)
    assert (unsubscribed.has_access, unsubscribed.reason) == (False, "no_access")


def test_check_all_answers_every_entitlement_and_no_access_for_the_others(client, catalog):
    all_ = client.check_all(catalog.customer)

    assert (all_.customer, all_.plan, all_.unavailable) == ("acme", "client-basic", False)
    assert sorted(e.feature for e in all_) == ["hd-video", "seats", "transfer"]
    assert all_["transfer"].balance == Decimal("10")
    assert all_.get("sso").has_access is False and all_.get("sso").reason == "no_access"


def test_consume_records_once_per_event_id_and_denies_past_the_hard_limit(client, catalog):
    first = client.consume(catalog.customer, catalog.transfer, "2.5")
    assert isinstance(first, Decision)
    assert (first.allowed, first.reason, first.entitlement.balance) == (True, None, Decimal("7.5"))
    assert first.event_id  # generated

    again = client.consume(catalog.customer, catalog.transfer, "2.5", event_id=first.event_id)
    assert again.allowed and again.entitlement.usage == Decimal("2.5")  # counted once

    denied = client.consume(catalog.customer, catalog.transfer, Decimal("8"), event_id="big-1")
    assert (denied.allowed, denied.reason) == (False, "limit_exceeded")
    assert denied.entitlement.balance == Decimal("7.5")  # nothing recorded
    assert not UsageEvent.objects.filter(event_id="big-1").exists()

    rest = client.consume(catalog.customer, catalog.transfer, "7.5", event_id="rest-1")
    assert rest.allowed and rest.entitlement.balance == 0
    assert rest.entitlement.has_access is False and rest.entitlement.reason == "limit_exceeded"
    assert UsageEvent.objects.filter(customer__external_id="acme").count() == 2


def test_consume_takes_timestamp_properties_and_dry_run(client, catalog):
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    dry = client.consume(catalog.customer, catalog.transfer, "1", dry_run=True)
    assert dry.allowed and dry.entitlement.usage == 1  # as it would be
    assert client.check(catalog.customer, catalog.transfer).usage == 0  # nothing recorded
    assert not UsageEvent.objects.exists()

    client.consume(
        catalog.customer, catalog.transfer, "1", event_id="ts-1", timestamp=at,
        properties={"job": "export"},
    )  # fmt: skip
    event = UsageEvent.objects.get(event_id="ts-1")
    assert (event.timestamp, event.properties) == (at, {"job": "export"})


def test_consume_without_access_is_denied_no_access(client, catalog):
    decision = client.consume(catalog.unsubscribed, catalog.transfer, "1")
    assert (decision.allowed, decision.reason) == (False, "no_access")
    assert decision.entitlement.has_access is False


def test_report_records_a_batch_counts_duplicates_and_lists_rejections(client, catalog):
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    events = [
        {"customer": "acme", "feature": "transfer", "quantity": "1.5", "event_id": "r-1"},
        ClientUsageEvent("acme", "transfer", Decimal("2"), timestamp=at),
        {"customer": "acme", "feature": "no-such-feature", "quantity": "1", "event_id": "r-3"},
    ]

    result = client.report(events)

    assert isinstance(result, BatchResult)
    assert (result.accepted, result.duplicates) == (2, 0)
    assert result.event_ids[0] == "r-1" and len(result.event_ids) == 3
    (rejected,) = result.rejected
    assert (rejected.index, rejected.event_id, rejected.code) == (2, "r-3", "feature_not_found")
    assert client.check("acme", "transfer").usage == Decimal("3.5")

    again = client.report([events[0]])
    assert (again.accepted, again.duplicates) == (0, 1)


def test_report_past_a_hard_limit_is_recorded_as_overage(client, catalog):
    client.report([{"customer": "acme", "feature": "transfer", "quantity": "12"}])
    e = client.check("acme", "transfer")
    assert (e.usage, e.overage, e.balance) == (Decimal("12"), Decimal("2"), 0)


def test_report_sends_1000_events_a_request(server_url, api_key, catalog, proxy):
    events = [
        {"customer": "acme", "feature": "transfer", "quantity": "0.001", "event_id": f"b-{i}"}
        for i in range(1001)
    ]
    with Client(proxy.url, api_key, timeout=30) as client:
        result = client.report(events)

    assert (result.accepted, result.duplicates, result.rejected) == (1001, 0, ())
    assert proxy.requests == 2
    assert UsageEvent.objects.filter(customer__external_id="acme").count() == 1001


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture
def nowhere():
    """A listener in front of nothing: it counts the connections made to it."""
    listener = Proxy("http://127.0.0.1:9")  # the discard port: nothing there
    yield listener
    listener.stop()


@pytest.mark.parametrize(
    ("quantity", "error"),
    [
        (0.1, TypeError),  # a float: inexact
        (True, TypeError),
        (["1"], TypeError),
        (None, TypeError),
        ("1e3", ValueError),
        ("1,000", ValueError),
        ("0x10", ValueError),
        ("NaN", ValueError),
        ("", ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal("Infinity"), ValueError),
    ],
)
def test_a_non_decimal_quantity_raises_before_any_request(nowhere, quantity, error):
    good = {"customer": "acme", "feature": "transfer", "quantity": "1"}
    with Client(nowhere.url, "key") as client:
        with pytest.raises(error, match="quantity"):
            client.consume("acme", "transfer", quantity)
        with pytest.raises(error, match="quantity"):  # not even the good event is sent
            client.report([good, {**good, "quantity": quantity}])
        with pytest.raises(error, match="quantity"):
            client.report([ClientUsageEvent("acme", "transfer", quantity)])

    assert nowhere.connections == 0


def test_a_naive_timestamp_raises_before_any_request(nowhere):
    with Client(nowhere.url, "key") as client, pytest.raises(ValueError, match="aware"):
        client.consume("acme", "transfer", "1", timestamp=dt.datetime(2026, 1, 1))
    assert nowhere.connections == 0


def test_a_4xx_raises_the_servers_code_and_is_not_retried(api_key, catalog, proxy):
    refused = [
        (lambda c: c.check("nobody", "transfer"), 404, "customer_not_found"),
        (lambda c: c.check("acme", "no-such-feature"), 404, "feature_not_found"),
        (lambda c: c.consume("acme", "hd-video", "1"), 400, "not_metered"),
        (lambda c: c.consume("acme", "transfer", "-1"), 400, "invalid"),
        (lambda c: c.consume("acme", "transfer", "0.00001"), 400, "invalid"),
        (lambda c: c.consume("acme", "transfer", "1", event_id="x" * 256), 400, "invalid"),
    ]
    with Client(proxy.url, api_key, retries=3) as client:
        for n, (call, status, code) in enumerate(refused, start=1):
            with pytest.raises(EntitlementsError) as e:
                call(client)
            assert (e.value.status, e.value.code) == (status, code)
            assert e.value.message
            assert proxy.requests == n  # one attempt each

    assert not UsageEvent.objects.exists()


def test_an_event_id_reused_for_another_quantity_is_a_conflict_not_retried(api_key, catalog, proxy):
    with Client(proxy.url, api_key, retries=3) as client:
        client.consume("acme", "transfer", "1", event_id="same")
        with pytest.raises(EntitlementsError) as e:
            client.consume("acme", "transfer", "2", event_id="same")

    assert (e.value.status, e.value.code, e.value.details) == (
        409,
        "idempotency_conflict",
        {"event_id": "same"},
    )
    assert proxy.requests == 2


def test_a_wrong_key_raises_unauthenticated(server_url, catalog):
    with Client(server_url, "not-a-key") as client, pytest.raises(EntitlementsError) as e:
        client.check("acme", "transfer")
    assert (e.value.status, e.value.code) == (401, "unauthenticated")


def test_the_base_url_may_name_the_api_root(server_url, api_key, catalog):
    with Client(f"{server_url}/api/v1/", api_key) as client:
        assert client.check("acme", "hd-video").has_access


@pytest.mark.parametrize(
    "arguments",
    [
        {"base_url": "127.0.0.1:8000"},  # no scheme: a typo, not an outage
        {"retries": -1},
        {"retries": 1.5},
    ],
)
def test_a_misconfigured_client_raises_at_once(arguments):
    with pytest.raises(ValueError):
        Client(**{"base_url": "http://127.0.0.1:8000", "api_key": "key", **arguments})
