"""Writes that Redis did not hear of (customers/snapshots.py, issue 16 item 8): their debt is
kept in the database with the write, so that a process ending (reloaded, killed) never leaves
the snapshot Redis kept to be answered. Here "the process ends" is this process forgetting
what it remembered in memory, as a new process starts with nothing; customers/tests/
test_faults_snapshots.py does it with gunicorn workers. Needs a Redis server (skipped without).
"""

from decimal import Decimal

import pytest

from core import shared_redis
from customers import services as customer_services
from customers import snapshot_debts, snapshots, tasks
from customers.models import SnapshotDebt
from entitlements_site.tests import test_api_snapshots
from entitlements_site.tests.test_api_snapshots import REDIS, check, consume

# The Redis of this test worker's own, emptied around each test.
mirror = test_api_snapshots.mirror
worker_id = test_api_snapshots.worker_id

pytestmark = pytest.mark.skipif(REDIS is None, reason="needs a Redis server")

DEAD_REDIS = "redis://127.0.0.1:1/0"  # a port nothing listens on


def redis_down(settings) -> None:
    settings.HOT_REDIS_URL = DEAD_REDIS
    shared_redis.forget()


def process_ends_and_redis_returns(settings, mirror) -> None:
    """The process that wrote ends (what it remembered goes with it); a new one starts while
    Redis, back, still holds the snapshot read before the write."""
    settings.HOT_REDIS_URL = mirror.test_url
    shared_redis.forget()
    snapshots.forget()


def write_consume(api, customer, features):
    assert consume(api, "3", "down-1")["allowed"] is True


def write_batch(api, customer, features):
    events = [{"event_id": "down-b", "customer": "acme", "feature": "data-transfer",
               "quantity": "3"}]  # fmt: skip
    assert api.post("/api/v1/usage", {"events": events}, format="json").json()["accepted"] == 1


def write_grant(api, customer, features):
    customer_services.grant_create(
        customer=customer, feature=features["transfer"], quantity=Decimal("10")
    )


def write_override(api, customer, features):
    customer_services.override_create(
        customer=customer, feature=features["transfer"], limit=Decimal("50"), reason="deal"
    )


@pytest.mark.parametrize(
    "write, seen",
    [
        (write_consume, {"usage": "3", "balance": "17"}),
        (write_batch, {"usage": "3", "balance": "17"}),
        (write_grant, {"granted": "10", "balance": "30"}),
        (write_override, {"limit": "50", "balance": "50"}),
    ],
    ids=["consume", "batch", "grant", "override"],
)
def test_a_write_redis_did_not_hear_of_shows_after_its_process_ended(
    write, seen, mirror, customer, features, api, settings
):
    # Given a check mirrored at 0 used of 20
    assert (check(api)["usage"], check(api)["balance"]) == ("0", "20")

    # When Redis cannot be reached, a write succeeds, and its process ends before Redis is back
    redis_down(settings)
    write(api, customer, features)
    process_ends_and_redis_returns(settings, mirror)
    assert mirror.exists(f"es:s:{customer.pk}")

    # Then the new process never answers the snapshot Redis kept, and uses the mirror again
    for _ in range(2):
        answer = check(api)
        assert {k: answer[k] for k in seen} == seen
    assert mirror.exists(f"es:s:{customer.pk}")


def test_a_refused_consume_while_redis_is_down_owes_nothing(mirror, customer, api, settings):
    # Given Redis down
    check(api)
    redis_down(settings)

    # When a consume beyond the balance is refused
    assert consume(api, "25", "too-much")["allowed"] is False

    # Then nothing was recorded, not even a debt, and the snapshot stays valid
    assert not SnapshotDebt.objects.exists()
    process_ends_and_redis_returns(settings, mirror)
    assert (check(api)["usage"], check(api)["balance"]) == ("0", "20")


def test_the_beat_task_settles_the_debts_left_once(mirror, customer, api, settings):
    # Given a consume while Redis was down, by a process that then ended
    check(api)
    redis_down(settings)
    consume(api, "3", "down-1")
    process_ends_and_redis_returns(settings, mirror)

    # When the beat's backstop runs twice
    settled = [tasks.snapshots_settle(), tasks.snapshots_settle()]

    # Then it settled the one debt once, and checks show the consume
    assert settled == [1, 0]
    assert not SnapshotDebt.objects.exists()
    assert check(api)["usage"] == "3"


def test_while_redis_is_still_down_the_debt_stays_owed(mirror, customer, api, settings):
    # Given a consume while Redis is down, by a process that ended
    check(api)
    redis_down(settings)
    consume(api, "3", "down-1")
    snapshots.forget()  # a new process, with Redis still down

    # When the backstop runs while Redis is still down, it settles nothing; checks go on
    assert tasks.snapshots_settle() == 0
    assert check(api)["usage"] == "3"  # from the database
    assert SnapshotDebt.objects.count() == 1

    # Then once Redis is back the debt is settled by the first check, which is exact
    process_ends_and_redis_returns(settings, mirror)
    assert check(api)["usage"] == "3"
    assert not SnapshotDebt.objects.exists()


def test_more_debts_than_a_settling_deletes_still_void_every_snapshot_owed(
    mirror, customer, plan, api, settings, monkeypatch
):
    # Given two customers' checks mirrored, and settlings of one round of two debts
    other = customer_services.customer_create(external_id="globex", name="Globex")
    customer_services.subscription_start(customer=other, plan=plan)
    other_check = "/api/v1/customers/globex/entitlements/data-transfer"
    assert (check(api)["usage"], api.get(other_check).json()["usage"]) == ("0", "0")
    monkeypatch.setattr(snapshot_debts, "SETTLE_CHUNK", 2)
    monkeypatch.setattr(snapshot_debts, "SETTLE_ROUNDS", 1)

    # When three consumes are made while Redis is down (acme twice, then globex) by a process
    # that then ends
    redis_down(settings)
    consume(api, "1", "down-1")
    consume(api, "1", "down-2")
    body = {"quantity": "4", "event_id": "down-3"}
    assert api.post(f"{other_check}/consume", body, format="json").json()["allowed"] is True
    process_ends_and_redis_returns(settings, mirror)

    # Then both customers' checks show their consumes, though one debt is left to delete
    assert check(api)["usage"] == "2"
    assert api.get(other_check).json()["usage"] == "4"
    assert SnapshotDebt.objects.count() == 1
