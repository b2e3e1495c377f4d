"""The consume's fast paths on PostgreSQL (issues 8 and 21): outside any transaction a warm
consume of the simple case (a sum, no grant in force, usage within the bounds the arithmetic
gives) is ONE message: BEGIN, one statement that locks, checks and writes, COMMIT. Otherwise
the two-round-trip path: BEGIN + its locks, then the event, counters, grants and COMMIT in one
statement. Both answer exactly what the ordinary path answers, and hand over (having written
nothing) when a counter must be created, the cached state is out of date or a threshold is
crossed. These tests commit for real (transaction=True), as production does.
"""

from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection

from customers import services as customer_services
from customers.engine.sql import postgresql
from customers.models import Grant, Notification, UsageEvent

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the path is PostgreSQL's"),
]

TRANSFER = "/api/v1/customers/acme/entitlements/data-transfer"


def consume(api, quantity: str, event_id: str, status: int = 200) -> dict:
    response = api.post(
        f"{TRANSFER}/consume", {"quantity": quantity, "event_id": event_id}, format="json"
    )
    assert response.status_code == status, response.content
    return response.json()


def test_a_warm_consume_is_one_statement_and_counts_once(customer, api, django_assert_num_queries):
    consume(api, "1", "warm-up")  # creates this period's counters, caches the state

    with django_assert_num_queries(1):
        answer = consume(api, "2.5", "e-1")
    assert answer["allowed"] is True
    assert answer["entitlement"]["usage"] == "3.5"
    # the entitlement it answers is the one a check reads afterwards, every figure of it
    assert answer["entitlement"] == api.get(TRANSFER).json()

    # The same event again: the first outcome, counted once
    again = consume(api, "2.5", "e-1")
    assert again["allowed"] is True
    assert UsageEvent.objects.filter(customer=customer).count() == 2
    assert api.get(TRANSFER).json()["usage"] == "3.5"

    # Reused for another quantity: a conflict, nothing recorded
    assert consume(api, "4", "e-1", status=409)["error"]["code"] == "idempotency_conflict"
    assert api.get(TRANSFER).json()["usage"] == "3.5"


def test_a_denial_is_answered_from_the_one_statement(customer, api, django_assert_num_queries):
    """At the hard limit the statement writes nothing and answers the counters it locked: the
    denial needs no second locking round trip (one more query looks for a replay)."""
    consume(api, "19", "warm-up")  # 95%: past 80, its notification (the ordinary path)
    consume(api, "0.5", "settled")
    with django_assert_num_queries(2):
        denied = consume(api, "1", "over")
    assert (denied["allowed"], denied["reason"]) == (False, "limit_exceeded")
    assert denied["entitlement"]["balance"] == "0.5"
    assert not UsageEvent.objects.filter(event_id="over").exists()
    assert consume(api, "0.5", "exactly")["entitlement"]["balance"] == "0"


def test_a_grant_in_force_takes_the_two_trip_path(
    customer, features, api, django_assert_num_queries
):
    """The one statement sees the grant and writes nothing; the two-trip path draws from it,
    and the next consumes of that customer go to it directly for a while."""
    consume(api, "19", "warm-up")
    grant = customer_services.grant_create(
        customer=customer, feature=features["transfer"], quantity=Decimal("10")
    )
    consume(api, "0.5", "state-reload")  # the grant changed the customer's state: reloaded
    with django_assert_num_queries(2):
        answer = consume(api, "1.5", "drawn")  # 0.5 from the allowance, 1 from the grant
    assert answer["entitlement"]["balance"] == "9"
    assert Grant.objects.get(pk=grant.pk).consumed == Decimal("1")


def test_a_denial_under_the_hard_limit_records_nothing(customer, api):
    consume(api, "1", "warm-up")
    denied = consume(api, "19.5", "too-much")  # 1 + 19.5 > 20
    assert (denied["allowed"], denied["reason"]) == (False, "limit_exceeded")
    assert denied["entitlement"]["balance"] == "19"
    assert not UsageEvent.objects.filter(event_id="too-much").exists()
    assert consume(api, "19", "exactly")["entitlement"]["balance"] == "0"


def test_grants_are_drawn_after_the_allowance(customer, features, api):
    consume(api, "15", "warm-up")
    grant = customer_services.grant_create(
        customer=customer, feature=features["transfer"], quantity=Decimal("10")
    )
    answer = consume(api, "8", "past-allowance")  # 5 from the allowance, 3 from the grant
    assert answer["allowed"] is True
    assert (answer["entitlement"]["granted"], answer["entitlement"]["balance"]) == ("7", "7")
    grant.refresh_from_db()
    assert grant.consumed == Decimal("3")
    consume(api, "6", "more")
    assert Grant.objects.get(pk=grant.pk).consumed == Decimal("9")


def test_a_state_change_between_consumes_is_seen(customer, features, api):
    consume(api, "10", "warm-up")
    customer_services.override_create(
        customer=customer, feature=features["transfer"], limit=Decimal("100"), reason="deal"
    )
    answer = consume(api, "50", "big")  # beyond the plan's 20, within the override's 100
    assert answer["allowed"] is True
    assert (answer["entitlement"]["limit"], answer["entitlement"]["usage"]) == ("100", "60")


def test_crossing_a_threshold_records_its_notification_and_sends_one_email(customer, api):
    consume(api, "10", "warm-up")  # 50%
    assert Notification.objects.count() == 0

    consume(api, "6.5", "crossing")  # 82.5%: past 80
    consume(api, "0.5", "after")  # 85%: nothing new

    notification = Notification.objects.get()
    assert notification.threshold == 80
    assert len(mail.outbox) == 1
    assert "80%" in mail.outbox[0].subject or "80%" in mail.outbox[0].body
    assert api.get(TRANSFER).json()["usage"] == "17"


def _consume_statements() -> list[tuple]:
    """This connection's prepared statements of the consume's call: (plans used,)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %s",
            [f"%{postgresql.CONSUME_FUNCTION_NAME}%"],
        )
        return cursor.fetchall()


def test_the_one_statement_is_prepared_once_per_connection(customer, api):
    """PostgreSQL parses and plans the call once per connection, not once per consume."""
    consume(api, "1", "warm-up")
    for number in range(3):
        consume(api, "0.5", f"p-{number}")
    (used,), *others = _consume_statements()
    assert not others and used >= 3
    assert api.get(TRANSFER).json()["usage"] == "2.5"


def test_without_prepared_statements_the_consume_is_the_same(customer, api, settings):
    settings.USAGE_PREPARED_STATEMENTS = False
    connection.close()  # a connection that never prepared it
    consume(api, "1", "warm-up")
    answer = consume(api, "2", "u-1")
    assert answer["allowed"] is True and answer["entitlement"]["usage"] == "3"
    assert _consume_statements() == []


def test_a_prepared_statement_lost_by_the_server_costs_nothing_but_a_warning(
    customer, api, monkeypatch, caplog
):
    """As behind a pooler in transaction mode: the server no longer has the statement psycopg
    prepared. The consume that finds out runs unprepared, once, and counts once; this process
    then stops preparing it."""
    monkeypatch.setattr(postgresql, "_prepared_refused", False)
    consume(api, "1", "warm-up")
    consume(api, "1", "before")
    with connection.cursor() as cursor:  # behind psycopg's back (it notices DEALLOCATE ALL)
        cursor.execute("SELECT name FROM pg_prepared_statements")
        for (name,) in cursor.fetchall():
            cursor.execute(f'DEALLOCATE "{name}"')
    try:
        with caplog.at_level("WARNING", logger=postgresql.__name__):
            answer = consume(api, "1", "after")
        assert answer["allowed"] is True and answer["entitlement"]["usage"] == "3"
        assert "lost a prepared statement" in caplog.text
        assert postgresql._prepared_refused is True
        assert consume(api, "1", "later")["entitlement"]["usage"] == "4"
        assert UsageEvent.objects.filter(customer=customer).count() == 4
        assert _consume_statements() == []  # nothing prepared since
    finally:
        connection.close()  # psycopg still counts the statement as prepared on this one
