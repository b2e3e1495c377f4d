"""One customer's concurrent consumes in this process sent as one call of the one-trip consume
(engine/combining.py, engine/consume.py `_consume_together`), on PostgreSQL: each event is
decided in turn under the same locks, recorded with its own values, answered with its own
outcome, and committed before any of them is answered."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection

from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory, PlanFactory
from customers import engine
from customers.engine import consume
from customers.engine.sql import postgresql
from customers.models import UsageEvent
from customers.tests.factories import CustomerFactory, SubscriptionFactory
from customers.tests.test_concurrency import AT, START, period_counter
from customers.tests.test_consume_function import _wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor == "sqlite", reason="the one-trip consume is PostgreSQL's"
    ),
]


@pytest.fixture
def calls(monkeypatch) -> list[list[str]]:
    """The event ids of each one-trip call, in order."""
    one_trip, calls = postgresql.consume_one_trip, []

    def counting(on_connection, params, events):
        calls.append([event[1] for event in events])
        return one_trip(on_connection, params, events)

    monkeypatch.setattr(postgresql, "consume_one_trip", counting)
    return calls


@pytest.fixture
def paused():
    """The function pausing 0.5 s before its locks, once per call."""
    lock = "    SELECT count(*) INTO l_locked"
    slow = postgresql.CONSUME_FUNCTION.replace(lock, f"    PERFORM pg_sleep(0.5);\n{lock}", 1)
    assert slow != postgresql.CONSUME_FUNCTION
    with connection.cursor() as cursor:
        cursor.execute(slow)
    yield
    postgresql.functions_create()


def customer_with(limit: str | None, **terms):
    """A customer on a hard limit of `limit` (None: unlimited) without thresholds to notify
    unless `terms` has some (so that every consume within it stays in the one trip), its
    state warm in this process."""
    plan = PlanFactory()
    feature = FeatureFactory(metered=True, key=f"calls-{plan.pk}")
    terms = {"notify_at": [], **terms}
    if limit is None:
        terms.update(unlimited=True, limit=None)
    else:
        terms["limit"] = Decimal(limit)
    PlanEntitlementFactory(plan=plan, feature=feature, **terms)
    customer = CustomerFactory()
    SubscriptionFactory(customer=customer, plan=plan, started_at=START)
    assert engine.entitlement_consume(customer, feature.key, "1", "warm", timestamp=AT).allowed
    return customer, feature


def consume_behind_a_running_call(customer, feature, first: dict, following: list[dict]):
    """`first`'s consume, and once its call has started (paused in the database), the
    `following` consumes in threads of their own: every answer, by event id (a list each)."""
    answers: dict[str, list] = {}
    errors: list[BaseException] = []

    def run(values: dict) -> None:
        try:
            answer = engine.entitlement_consume(customer, feature.key, **values)
            answers.setdefault(values["event_id"], []).append(answer)
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(first,))]
    threads[0].start()
    _wait_for("PgSleep", postgresql.CONSUME_FUNCTION_NAME)
    threads += [threading.Thread(target=run, args=(values,)) for values in following]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a consume hung"
    if errors:
        raise errors[0]
    return answers


def test_consumes_arriving_during_a_call_go_in_one_call_each_with_its_own_values(calls, paused):
    # Given a customer with 1 used of 1000, and a consume of 0.5 under way
    customer, feature = customer_with("1000")
    calls.clear()
    first = {"quantity": "0.5", "event_id": "c-0", "timestamp": AT}
    # when seven more arrive meanwhile, each with its own quantity, moment and properties,
    # and one of them twice
    following = [
        {"quantity": str(n), "event_id": f"c-{n}", "timestamp": AT + timedelta(minutes=n),
         "properties": {"n": n, "text": f'"quoted", {{braced}} \\ {n}'}}
        for n in range(1, 8)
    ]  # fmt: skip
    following.append(dict(following[2]))  # c-3 again
    answers = consume_behind_a_running_call(customer, feature, first, following)

    # then the eight went in one call behind the first
    assert [len(call) for call in calls] == [1, 8]
    assert sorted(calls[1]) == sorted(["c-1", "c-2", "c-3", "c-3", "c-4", "c-5", "c-6", "c-7"])
    # every consume was allowed; c-3's second answer is a replay that counted nothing
    assert all(a.allowed for each in answers.values() for a in each)
    assert sorted(a.replayed for a in answers["c-3"]) == [False, True]
    # each answer's usage is the usage after its own event, in the order the call took them
    used = Decimal("1.5")
    new = {e: next(a for a in answers[e] if not a.replayed) for e in answers}
    order = list(dict.fromkeys(calls[1]))
    for event_id in order:
        used += Decimal(event_id[2:])
        assert new[event_id].entitlement.usage == used, event_id
    assert used == Decimal("29.5")
    # the ledger holds each event once, with its own quantity, moment and properties
    assert period_counter(customer, feature).used == Decimal("29.5")
    events = {e.event_id: e for e in UsageEvent.objects.filter(customer=customer)}
    assert sorted(events) == sorted(["warm", "c-0", *(f"c-{n}" for n in range(1, 8))])
    for n in range(1, 8):
        event = events[f"c-{n}"]
        assert (event.quantity, event.timestamp) == (Decimal(n), AT + timedelta(minutes=n))
        assert event.properties == {"n": n, "text": f'"quoted", {{braced}} \\ {n}'}


def test_one_call_of_many_consumes_allows_exactly_what_the_hard_limit_leaves(calls, paused):
    # Given 1 used of a hard limit of 5, and a consume of 1 under way
    customer, feature = customer_with("5")
    calls.clear()
    first = {"quantity": "1", "event_id": "h-0", "timestamp": AT}
    # when six more of 1 arrive meanwhile
    following = [{"quantity": "1", "event_id": f"h-{n}", "timestamp": AT} for n in range(1, 7)]
    answers = consume_behind_a_running_call(customer, feature, first, following)

    # then they went in one call, and exactly three of them were allowed
    assert [len(call) for call in calls] == [1, 6]
    allowed = {e: a[0] for e, a in answers.items() if a[0].allowed}
    denied = {e: a[0] for e, a in answers.items() if not a[0].allowed}
    assert (len(allowed), len(denied)) == (4, 3)  # h-0 and three of the six
    assert sorted(a.entitlement.usage for a in allowed.values()) == [2, 3, 4, 5]
    assert {a.reason for a in denied.values()} == {"limit_exceeded"}
    assert {a.entitlement.balance for a in denied.values()} == {0}
    # and the counter equals the ledger
    assert period_counter(customer, feature).used == 5
    assert sorted(
        UsageEvent.objects.filter(customer=customer).values_list("event_id", flat=True)
    ) == sorted(["warm", *allowed])


@pytest.mark.parametrize(
    ("limit", "terms"),
    [("1000", {"notify_at": [50, 80, 100]}), (None, {})],
    ids=["thresholds ahead", "unlimited"],
)
def test_consumes_with_thresholds_ahead_or_without_a_limit_share_one_call(
    calls, paused, limit, terms
):
    # Given 1 used, with thresholds still far ahead (or no limit), and a consume under way
    customer, feature = customer_with(limit, **terms)
    calls.clear()
    first = {"quantity": "1", "event_id": "t-0", "timestamp": AT}
    # when five more arrive meanwhile
    following = [
        {"quantity": str(n), "event_id": f"t-{n}", "timestamp": AT + timedelta(seconds=n)}
        for n in range(1, 6)
    ]
    answers = consume_behind_a_running_call(customer, feature, first, following)

    # then they went in one call, every one allowed, each answer its own usage
    assert [len(call) for call in calls] == [1, 5]
    assert all(a[0].allowed and not a[0].replayed for a in answers.values())
    used = Decimal(2)
    for event_id in calls[1]:
        used += Decimal(event_id[2:])
        assert answers[event_id][0].entitlement.usage == used
    assert period_counter(customer, feature).used == used == 17


def test_a_consume_that_arrives_alone_is_a_call_of_its_own(calls):
    customer, feature = customer_with("100")
    calls.clear()
    engine.entitlement_consume(customer, feature.key, "2", "a-1", timestamp=AT)
    engine.entitlement_consume(customer, feature.key, "3", "a-2", timestamp=AT)

    assert calls == [["a-1"], ["a-2"]]
    assert period_counter(customer, feature).used == 6
    assert consume._combiner._waiting == {}
