"""Holds and commits in two round trips on PostgreSQL (engine/reservation_trips.py): outside
any transaction a warm hold is BEGIN + its locks, then the reservation and COMMIT; a warm commit
the same with the event, counters, grants and reservation. Every story of
test_api_reservations.py runs again here committing for real (transaction=True), as in
production, so both paths answer the same; the plain cases are proven to take two trips."""

import pytest
from django.db import connection

from customers.models import Reservation, UsageEvent

from .test_api_reservations import *  # noqa: F403 (the same stories, committed for real)
from .test_api_reservations import BASE, commit, hold, transfer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the path is PostgreSQL's"),
]


def test_a_warm_hold_and_its_commit_are_two_statements_each(
    customer, api, django_assert_num_queries
):
    consume = {"quantity": "1", "event_id": "warm-up"}
    api.post(f"{BASE}/consume", consume, format="json")  # the counters made, the state cached

    with django_assert_num_queries(2):
        held = hold(api, "job", "6")
    assert held.status_code == 201 and held.json()["entitlement"]["reserved"] == "6"
    assert held.json()["reservation"]["status"] == "held"

    with django_assert_num_queries(2):
        done = commit(api, "job", quantity="4")
    assert done.status_code == 200
    assert done.json()["reservation"] == {
        **held.json()["reservation"], "status": "committed", "committed_quantity": "4"
    }  # fmt: skip
    assert (done.json()["entitlement"]["usage"], done.json()["entitlement"]["reserved"]) == (
        "5", "0"
    )  # fmt: skip
    stored = Reservation.objects.get()
    assert (stored.status, stored.committed_quantity, stored.event.quantity) == (
        "committed", 4, 4
    )  # fmt: skip
    assert UsageEvent.objects.get(event_id="job").properties == {"reservation": "job"}
    assert transfer(api)["usage"] == "5"
    # and the same commit again: the ordinary path answers the same
    assert commit(api, "job", quantity="4").json()["reservation"] == done.json()["reservation"]


def test_a_commit_past_a_threshold_takes_the_ordinary_path_and_notifies(customer, api, mailoutbox):
    api.post(f"{BASE}/consume", {"quantity": "1", "event_id": "warm-up"}, format="json")
    hold(api, "job", "16")
    assert commit(api, "job").json()["entitlement"]["usage"] == "17"  # 85% of 20
    assert len(mailoutbox) == 1
