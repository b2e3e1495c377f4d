"""`reserve()`: hold, then commit or release, as a context manager.

The tests that need the server's reservations endpoint (DESIGN.md "Reservations", issue 18)
probe it first (the `reservations` fixture). The fail policy's holds need no endpoint."""

import asyncio
import time
from decimal import Decimal

import pytest
from entitlements_client import (
    AsyncClient,
    Client,
    EntitlementsError,
    EntitlementsUnavailable,
    Reservation,
)

from customers.models import UsageEvent


def transfer(client):
    return client.check("acme", "transfer")


@pytest.mark.usefixtures("reservations")
class TestOnTheServer:
    def test_a_hold_counts_against_the_balance_until_committed_once(self, client):
        # Given a hold of 4 GB
        hold = client.reserve("acme", "transfer", "4", ttl_seconds=60)
        assert isinstance(hold, Reservation)
        assert (hold.allowed, hold.reason, hold.status, hold.quantity) == (
            True, None, "held", Decimal("4")
        )  # fmt: skip
        assert hold.expires_at.tzinfo is not None
        assert (transfer(client).reserved, transfer(client).balance) == (4, 6)
        # and the same reservation_id again holds nothing more
        again = client.reserve("acme", "transfer", "4", reservation_id=hold.id)
        assert again.allowed and transfer(client).reserved == 4

        # When 2.5 GB of it is committed (twice: the same answer)
        hold.commit("2.5")
        assert hold.commit("2.5").status == "committed"

        # Then 2.5 GB is used, under the reservation id, and nothing is held any more
        assert (transfer(client).usage, transfer(client).reserved) == (Decimal("2.5"), 0)
        assert UsageEvent.objects.get(event_id=hold.id).quantity == Decimal("2.5")

    def test_the_block_releases_unless_committed_and_denies_what_does_not_fit(self, client):
        with client.reserve("acme", "transfer", "4") as hold:
            assert transfer(client).reserved == 4
        assert hold.status == "released" and transfer(client).reserved == 0

        with pytest.raises(RuntimeError), client.reserve("acme", "transfer", "4"):
            raise RuntimeError("the work failed")
        assert transfer(client).reserved == 0

        with client.reserve("acme", "transfer", "3") as hold:
            hold.commit()
        assert (transfer(client).usage, transfer(client).reserved) == (3, 0)

        with client.reserve("acme", "transfer", "8") as hold:
            assert (hold.allowed, hold.reason) == (False, "limit_exceeded")
        assert (transfer(client).usage, transfer(client).reserved) == (3, 0)

    def test_a_dropped_answer_holds_once_and_a_late_commit_is_a_409(self, api_key, proxy, client):
        proxy.drop_responses(1)
        with Client(proxy.url, api_key, backoff=0.01) as through_proxy:
            hold = through_proxy.reserve("acme", "transfer", "3", ttl_seconds=1)
            assert hold.allowed and proxy.forwarded == 2
            assert transfer(client).reserved == 3

            time.sleep(1.2)
            with pytest.raises(EntitlementsError) as e:
                hold.commit()
        assert (e.value.status, e.value.code) == (409, "reservation_expired")
        assert transfer(client).reserved == 0

    def test_the_async_client_holds_commits_and_releases(self, server_url, api_key, client):
        async def story():
            async with AsyncClient(server_url, api_key) as async_client:
                async with await async_client.reserve("acme", "transfer", "2") as kept:
                    await kept.commit("1")
                async with await async_client.reserve("acme", "transfer", "5"):
                    pass
            return kept

        assert asyncio.run(story()).status == "committed"
        assert (transfer(client).usage, transfer(client).reserved) == (1, 0)


# --- the fail policy (no endpoint needed) ---------------------------------------------------


def test_unreachable_a_fail_open_hold_is_allowed_and_its_commit_counts_once_later(
    api_key, catalog, proxy
):
    # Given a server that cannot be reached for the reservation
    proxy.answer_bad_gateway(100)
    with Client(proxy.url, api_key, retries=1, backoff=0.01, fail_open=["transfer"]) as client:
        with client.reserve("acme", "transfer", "4") as hold:
            # Then the fail-open feature is allowed, held nowhere
            assert (hold.allowed, hold.reason, hold.status) == (True, "unavailable", "unavailable")
            # and a commit while the server is still unreachable says so
            with pytest.raises(EntitlementsUnavailable):
                hold.commit("3")
            # When the server is back, the commit records the usage under the reservation id
            proxy.heal()
            hold.commit("3")
            hold.commit("3")  # again: counted once
        assert hold.status == "committed"
        assert transfer(client).usage == Decimal("3")
    assert list(UsageEvent.objects.values_list("event_id", "quantity")) == [(hold.id, Decimal("3"))]


def test_unreachable_other_features_are_denied_and_leaving_the_block_is_quiet(
    stoppable_server, api_key, catalog
):
    stoppable_server.stop()
    with Client(stoppable_server.url, api_key, retries=0) as client:
        with client.reserve("acme", "transfer", "4") as hold:
            assert (hold.allowed, hold.reason) == (False, "unavailable")
            with pytest.raises(ValueError, match="nothing is held"):
                hold.commit()
        assert hold.status == "unavailable"  # nothing was held, nothing released


def test_bad_input_raises_before_any_request(api_key, catalog, proxy):
    with Client(proxy.url, api_key) as client:
        with pytest.raises(TypeError):
            client.reserve("acme", "transfer", 2.5)
        with pytest.raises(ValueError):
            client.reserve("acme", "transfer", "2,5")
        with pytest.raises(TypeError):
            client.reserve("acme", "transfer", "2", ttl_seconds="300")
    assert proxy.requests == 0
