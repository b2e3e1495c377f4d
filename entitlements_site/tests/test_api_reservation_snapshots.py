"""Held units in the snapshots mirrored in Redis (customers/snapshots.py): a hold, a commit and
a release show in the very next check, and so does an expiry, with no job and no write: the
snapshot's horizon is no later than its first hold's expiry. Needs a Redis server."""

import datetime as dt
from decimal import Decimal

import pytest

from customers.engine import entitlement_check
from customers.models import Reservation

from .test_api_snapshots import REDIS, check, mirror, worker_id  # noqa: F401 (fixtures)

HOLDS = "/api/v1/customers/acme/entitlements/data-transfer/reservations"
pytestmark = pytest.mark.skipif(REDIS is None, reason="needs a Redis server")


def hold(api, reservation_id: str, quantity: str, ttl: int = 300) -> dict:
    body = {"reservation_id": reservation_id, "quantity": quantity, "ttl_seconds": ttl}
    response = api.post(HOLDS, body, format="json")
    assert response.status_code in (200, 201), response.content
    return response.json()


def test_holds_commits_and_releases_show_in_the_next_warm_check(
    mirror,  # noqa: F811
    customer,
    api,
    django_assert_num_queries,
):
    # Given a mirrored snapshot: a check costs no query
    assert check(api)["reserved"] == "0"
    with django_assert_num_queries(0):
        assert check(api)["balance"] == "20"

    # When 8 units are held, the next check shows them, and is then answered from Redis again
    assert hold(api, "a", "8")["allowed"] is True
    assert (check(api)["reserved"], check(api)["balance"]) == ("8", "12")
    with django_assert_num_queries(0):
        assert check(api)["reserved"] == "8"

    # A commit of 3 and a release of another hold show at once too
    hold(api, "b", "4")
    assert check(api)["reserved"] == "12"
    api.post(f"{HOLDS}/a/commit", {"quantity": "3"}, format="json")
    assert (check(api)["usage"], check(api)["reserved"]) == ("3", "4")
    api.delete(f"{HOLDS}/b")
    assert (check(api)["usage"], check(api)["reserved"], check(api)["balance"]) == ("3", "0", "17")
    with django_assert_num_queries(0):
        assert check(api)["balance"] == "17"


def test_an_expired_hold_counts_for_nothing_in_the_next_check_without_any_write(
    mirror,  # noqa: F811
    customer,
    api,
    django_assert_num_queries,
):
    # Given a hold of 20 (all of it) for 60 seconds, mirrored
    hold(api, "job", "20", ttl=60)
    expires_at = Reservation.objects.get().expires_at
    before = expires_at - dt.timedelta(seconds=1)
    assert entitlement_check(customer, "data-transfer", before).balance == Decimal("0")
    with django_assert_num_queries(0):
        assert entitlement_check(customer, "data-transfer", before).reserved == Decimal("20")

    # When its expiry passes (nothing written, no job run), the mirror is not answered: the
    # database is, with the units back
    with django_assert_num_queries(1):
        e = entitlement_check(customer, "data-transfer", expires_at)
    assert (e.reserved, e.balance) == (Decimal("0"), Decimal("20"))


def test_a_snapshot_keeps_each_features_held_units_and_their_first_expiry(
    mirror,  # noqa: F811
    customer,
    api,
):
    hold(api, "long", "2", ttl=3600)
    hold(api, "short", "3", ttl=60)
    check(api)  # mirrored
    short = Reservation.objects.get(reservation_id="short").expires_at
    e = entitlement_check(customer, "data-transfer", short - dt.timedelta(seconds=1))
    assert (e.reserved, e.holds) == (Decimal("5"), 2)
    e = entitlement_check(customer, "data-transfer", short)
    assert (e.reserved, e.holds) == (Decimal("2"), 1)
