"""`AsyncClient`: the same calls, retries and fail policy as `Client`, awaited."""

import asyncio
from decimal import Decimal

import pytest
from entitlements_client import (
    AsyncClient,
    CustomerEntitlements,
    EntitlementsError,
    EntitlementsUnavailable,
)

from customers.models import UsageEvent


def run(coroutine):
    return asyncio.run(coroutine)


def test_every_call_answers_as_the_sync_client_does(server_url, api_key, catalog):
    async def story():
        async with AsyncClient(server_url, api_key) as client:
            e = await client.check("acme", "transfer")
            everything = await client.check_all("acme")
            decision = await client.consume("acme", "transfer", "2.5", event_id="a-1")
            again = await client.consume("acme", "transfer", "2.5", event_id="a-1")
            batch = await client.report(
                [{"customer": "acme", "feature": "transfer", "quantity": 1}]
            )
            return e, everything, decision, again, batch

    e, everything, decision, again, batch = run(story())

    assert (e.balance, e.reason) == (Decimal("10"), None)
    assert isinstance(everything, CustomerEntitlements) and everything["hd-video"].has_access
    assert decision.allowed and decision.entitlement.balance == Decimal("7.5")
    assert again.allowed and again.entitlement.usage == Decimal("2.5")  # counted once
    assert (batch.accepted, batch.duplicates) == (1, 0)
    assert UsageEvent.objects.filter(customer__external_id="acme").count() == 2


def test_a_dropped_answer_is_retried_and_counts_once(api_key, catalog, proxy):
    proxy.drop_responses(1)

    async def consume():
        async with AsyncClient(proxy.url, api_key, backoff=0.01) as client:
            return await client.consume("acme", "transfer", "3")

    decision = run(consume())

    assert proxy.forwarded == 2 and decision.allowed
    assert list(UsageEvent.objects.values_list("event_id", "quantity")) == [
        (decision.event_id, Decimal("3"))
    ]


def test_4xx_raises_and_bad_input_raises_before_any_request(api_key, catalog, proxy):
    async def calls():
        async with AsyncClient(proxy.url, api_key) as client:
            with pytest.raises(TypeError):
                await client.consume("acme", "transfer", 1.5)
            assert proxy.requests == 0
            with pytest.raises(EntitlementsError) as e:
                await client.consume("acme", "seats", "1")
            return e.value

    error = run(calls())
    assert (error.status, error.code, proxy.requests) == (400, "not_metered", 1)


def test_with_the_server_stopped_the_fail_policy_answers(stoppable_server, api_key, catalog):
    stoppable_server.stop()

    async def calls():
        async with AsyncClient(
            stoppable_server.url, api_key, retries=1, backoff=0.01, fail_open=["hd-video"]
        ) as client:
            video = await client.check("acme", "hd-video")
            transfer = await client.consume("acme", "transfer", "1")
            everything = await client.check_all("acme")
            with pytest.raises(EntitlementsUnavailable):
                await client.report([{"customer": "acme", "feature": "transfer", "quantity": 1}])
            return video, transfer, everything

    video, transfer, everything = run(calls())
    assert (video.has_access, video.reason) == (True, "unavailable")
    assert (transfer.allowed, transfer.reason) == (False, "unavailable")
    assert everything.unavailable and everything["hd-video"].has_access
