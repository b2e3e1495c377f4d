"""Retries and the fail policy, with real faults between the client and the real server: a
proxy that drops or delays an answer or answers 502, and a server stopped mid-test."""

import time
from decimal import Decimal

import pytest
from entitlements_client import Client, EntitlementsUnavailable

from customers.models import UsageEvent


def usage_events(customer: str = "acme") -> list[tuple[str, Decimal]]:
    return list(
        UsageEvent.objects.filter(customer__external_id=customer).values_list(
            "event_id", "quantity"
        )
    )


# --- retries --------------------------------------------------------------------------------


def test_a_consume_whose_answer_is_dropped_is_retried_with_its_event_id_and_counts_once(
    api_key, catalog, proxy
):
    # Given a proxy that forwards the consume, lets the server record it, then drops the answer
    proxy.drop_responses(1)
    with Client(proxy.url, api_key, retries=2, backoff=0.01) as client:
        # When the client consumes 2.5 GB
        decision = client.consume(catalog.customer, catalog.transfer, "2.5")

    # Then the server saw it twice, with one event_id, and counted it once
    assert proxy.forwarded == 2
    assert decision.allowed and decision.entitlement.usage == Decimal("2.5")
    assert usage_events() == [(decision.event_id, Decimal("2.5"))]


def test_a_consume_that_times_out_is_retried_and_counts_once(api_key, catalog, proxy):
    proxy.delay_responses(1.5, n=1)
    with Client(proxy.url, api_key, timeout=0.5, retries=2, backoff=0.01) as client:
        decision = client.consume(catalog.customer, catalog.transfer, "1", event_id="slow-1")

    assert proxy.forwarded == 2
    assert decision.allowed and decision.event_id == "slow-1"
    assert usage_events() == [("slow-1", Decimal("1"))]


def test_a_report_whose_answer_is_dropped_counts_each_event_once(api_key, catalog, proxy):
    proxy.drop_responses(1)
    events = [{"customer": "acme", "feature": "transfer", "quantity": "1"} for _ in range(3)]
    with Client(proxy.url, api_key, backoff=0.01) as client:
        result = client.report(events)

    assert proxy.forwarded == 2
    assert (result.accepted, result.duplicates) == (0, 3)  # the second attempt found them all
    assert sorted(usage_events()) == sorted((i, Decimal("1")) for i in result.event_ids)


def test_a_502_is_retried_then_answered(api_key, catalog, proxy):
    proxy.answer_bad_gateway(2)
    with Client(proxy.url, api_key, retries=2, backoff=0.01) as client:
        e = client.check(catalog.customer, catalog.transfer)

    assert (proxy.requests, proxy.forwarded) == (3, 1)
    assert e.has_access and e.reason is None


def test_the_last_retry_waits_no_longer_than_the_backoff_allows(api_key, catalog, proxy):
    proxy.answer_bad_gateway(3)
    started = time.monotonic()
    with Client(proxy.url, api_key, retries=2, backoff=0.2, max_backoff=0.3) as client:
        client.check(catalog.customer, catalog.transfer)
    # waits are random in [0, 0.2] then [0, 0.3]: together well under a second
    assert time.monotonic() - started < 1.5
    assert proxy.requests == 3


# --- the fail policy ------------------------------------------------------------------------


def test_answers_5xx_after_the_retries_fail_open_features_allowed_others_denied(
    api_key, catalog, proxy
):
    proxy.answer_bad_gateway(100)
    with Client(proxy.url, api_key, retries=2, backoff=0.01, fail_open={"hd-video"}) as client:
        video = client.check(catalog.customer, "hd-video")
        transfer = client.consume(catalog.customer, catalog.transfer, "1")

    assert (video.has_access, video.reason, video.unavailable) == (True, "unavailable", True)
    assert (transfer.allowed, transfer.reason) == (False, "unavailable")
    assert proxy.requests == 6 and proxy.forwarded == 0  # 3 attempts each
    assert usage_events() == []


def test_with_the_server_stopped_fail_open_features_are_allowed_and_the_rest_denied(
    stoppable_server, api_key, catalog
):
    client = Client(
        stoppable_server.url, api_key, timeout=1, retries=1, backoff=0.01,
        fail_open=["transfer", "hd-video"],
    )  # fmt: skip
    # Given a client that has talked to the server (a pooled connection is open)
    assert client.consume(catalog.customer, catalog.transfer, "1").reason is None
    assert client.check(catalog.customer, catalog.sso).reason == "no_access"

    # When the server stops
    stoppable_server.stop()

    # Then fail-open features are allowed and the others denied, all with "unavailable"
    consume = client.consume(catalog.customer, catalog.transfer, "1")
    assert (consume.allowed, consume.reason) == (True, "unavailable")
    assert consume.entitlement.has_access and consume.entitlement.limit is None
    assert client.check(catalog.customer, "hd-video").has_access is True
    sso = client.check(catalog.customer, catalog.sso)
    assert (sso.has_access, sso.reason) == (False, "unavailable")
    everything = client.check_all(catalog.customer)
    assert everything.unavailable and len(everything) == 0
    assert everything["hd-video"].has_access and not everything["seats"].has_access
    assert everything["seats"].reason == "unavailable"
    # and reporting usage, which has no policy to fall back on, says so
    with pytest.raises(EntitlementsUnavailable) as e:
        client.report([{"customer": "acme", "feature": "transfer", "quantity": "1"}])
    assert (e.value.status, e.value.code) == (None, "unavailable")
    client.close()
    assert usage_events() == [(usage_events()[0][0], Decimal("1"))]  # only the first consume


def test_a_fail_policy_given_as_one_name_means_that_feature(stoppable_server, api_key):
    stoppable_server.stop()
    with Client(stoppable_server.url, api_key, retries=0, fail_open="hd-video") as client:
        assert client.check("acme", "hd-video").has_access
        assert not client.check("acme", "h").has_access
