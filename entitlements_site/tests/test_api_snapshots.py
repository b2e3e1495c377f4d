"""Checks answered from usage snapshots mirrored in Redis (customers/snapshots.py, issue 8).

A warm check spends one Redis round trip and no query, and is never stale: whatever returned
before it (a consume, a batch, a grant, an override, a plan or catalog change) shows in it;
a write in flight, a window or grant ending, or Redis failing sends it to the database.
These tests need a Redis server (the one CI starts; skipped without one).
"""

import datetime as dt
import os
import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from catalog import services as catalog_services
from core import shared_redis
from customers import services as customer_services
from customers import snapshots
from customers.engine import entitlement_check

ENTITLEMENT = "/api/v1/customers/acme/entitlements/data-transfer"


def _redis_base() -> str | None:
    import redis

    url = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.3).ping()
    except redis.RedisError:
        return None
    return url.rsplit("/", 1)[0]


REDIS = _redis_base()
pytestmark = pytest.mark.skipif(REDIS is None, reason="needs a Redis server")


@pytest.fixture
def mirror(settings, worker_id):
    """The hot path's Redis on a database of this test worker's own, emptied around the test."""
    import redis

    db = 12 + (int(worker_id[2:]) if worker_id.startswith("gw") else 0)
    url = f"{REDIS}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.test_url = url
    settings.HOT_REDIS_URL = url
    settings.USAGE_SNAPSHOTS = True
    shared_redis.forget()
    snapshots.forget()
    yield client
    client.flushdb()
    shared_redis.forget()
    snapshots.forget()


@pytest.fixture
def worker_id(request):
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


def consume(api, quantity: str, event_id: str) -> dict:
    body = {"quantity": quantity, "event_id": event_id}
    response = api.post(f"{ENTITLEMENT}/consume", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def check(api) -> dict:
    response = api.get(ENTITLEMENT)
    assert response.status_code == 200, response.content
    return response.json()


def test_a_warm_check_makes_no_query_and_shows_every_consume_that_returned(
    mirror, customer, api, django_assert_num_queries
):
    # Given a check that read the database and mirrored its snapshot
    assert check(api)["usage"] == "0"
    assert mirror.exists(f"es:s:{customer.pk}")

    # When it is asked again: no query at all
    with django_assert_num_queries(0):
        assert check(api)["balance"] == "20"

    # Then each consume that returned shows in the next check, whoever answers it
    for n in range(1, 4):
        assert consume(api, "1.5", f"c-{n}")["allowed"] is True
        assert Decimal(check(api)["usage"]) == Decimal("1.5") * n
    with django_assert_num_queries(0):
        assert check(api)["balance"] == "15.5"


def test_batches_grants_overrides_and_plan_changes_show_at_once(
    mirror, customer, features, api, django_assert_num_queries
):
    check(api)
    batch = {"events": [{"event_id": "b-1", "customer": "acme", "feature": "data-transfer",
                         "quantity": "4"}]}  # fmt: skip
    assert api.post("/api/v1/usage", batch, format="json").json()["accepted"] == 1
    assert check(api)["usage"] == "4"

    customer_services.grant_create(
        customer=customer, feature=features["transfer"], quantity=Decimal("10")
    )
    assert check(api)["granted"] == "10"
    assert check(api)["balance"] == "26"

    customer_services.override_create(
        customer=customer, feature=features["transfer"], limit=Decimal("50"), reason="deal"
    )
    answer = check(api)
    assert (answer["limit"], answer["source"], answer["balance"]) == ("50", "override", "56")

    with django_assert_num_queries(0):
        assert check(api)["limit"] == "50"


def test_a_catalog_change_shows_at_once(mirror, customer, plan, features, api):
    assert check(api)["limit"] == "20"
    entitlement = plan.entitlements.get(feature=features["transfer"])
    catalog_services.plan_entitlement_update(entitlement=entitlement, limit=Decimal("35"))
    assert check(api)["limit"] == "35"


def test_while_a_write_is_in_flight_checks_read_the_database_and_store_nothing(
    mirror, customer, api, django_assert_num_queries
):
    check(api)
    mirror.delete(f"es:s:{customer.pk}")
    mirror.set(f"es:d:{customer.pk}", 1)  # a consume between write_begin and write_end

    with django_assert_num_queries(1):
        assert check(api)["usage"] == "0"
    assert not mirror.exists(f"es:s:{customer.pk}")

    mirror.delete(f"es:d:{customer.pk}")
    check(api)
    assert mirror.exists(f"es:s:{customer.pk}")


def test_a_snapshot_is_not_used_past_the_end_of_a_window_or_a_grant(
    mirror, customer, features, django_assert_num_queries
):
    grant = customer_services.grant_create(
        customer=customer,
        feature=features["transfer"],
        quantity=Decimal("5"),
        expires_at=timezone.now() + dt.timedelta(hours=1),
    )
    now = grant.effective_at
    assert entitlement_check(customer, "data-transfer", now).granted == Decimal("5")
    with django_assert_num_queries(0):
        assert entitlement_check(customer, "data-transfer", now).granted == Decimal("5")

    # An hour later the grant has expired: the snapshot's horizon has passed
    later = now + dt.timedelta(hours=1, seconds=1)
    with django_assert_num_queries(1):
        assert entitlement_check(customer, "data-transfer", later).granted == Decimal("0")


def test_redis_down_checks_and_consumes_use_the_database_and_nothing_stale_survives(
    mirror, customer, api, settings
):
    # Given a mirrored snapshot at usage 0
    assert check(api)["usage"] == "0"

    # When Redis cannot be reached (a port nothing listens on), consumes and checks go on
    settings.HOT_REDIS_URL = "redis://127.0.0.1:1/0"
    shared_redis.forget()
    assert consume(api, "3", "down-1")["entitlement"]["usage"] == "3"
    assert check(api)["usage"] == "3"

    # Then when it is back with its old snapshot (usage 0), that snapshot is never answered
    settings.HOT_REDIS_URL = mirror.test_url
    shared_redis.forget()  # as the pause after a failure ends
    assert mirror.exists(f"es:s:{customer.pk}")
    assert check(api)["usage"] == "3"
    assert check(api)["usage"] == "3"


def test_the_rate_limit_counts_in_the_same_round_trip_and_refuses_the_sixth(
    mirror, customer, api, settings
):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "5/min"},
    }
    answers = [api.get(ENTITLEMENT) for _ in range(6)]
    assert [a.status_code for a in answers[:5]] == [200] * 5
    assert answers[5].status_code == 429
    assert answers[5].json()["error"]["code"] == "throttled"
    assert int(answers[5]["Retry-After"]) >= 1
    refused = api.post(f"{ENTITLEMENT}/consume", {"quantity": "1", "event_id": "x"}, format="json")
    assert refused.status_code == 429
    assert check_usage_in_database(customer) == Decimal("0")


def check_usage_in_database(customer) -> Decimal:
    from customers.models import UsageEvent

    return sum((e.quantity for e in UsageEvent.objects.filter(customer=customer)), Decimal("0"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency needs PostgreSQL")
def test_concurrent_consumes_and_checks_every_check_shows_what_returned_before_it(
    mirror, customer, api_key
):
    # Given 8 clients, each consuming then checking, 15 times, on one customer
    errors: list[str] = []

    def client_loop(n: int) -> None:
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
        try:
            for i in range(15):
                body = {"quantity": "0.1", "event_id": f"t{n}-{i}"}
                answer = api.post(f"{ENTITLEMENT}/consume", body, format="json").json()
                returned = Decimal(answer["entitlement"]["usage"])
                seen = Decimal(api.get(ENTITLEMENT).json()["usage"])
                if seen < returned:
                    errors.append(f"client {n}: consume answered {returned}, check {seen}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then no check ever showed less than a consume that had returned, and all is counted
    assert errors == []
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    assert check(api)["usage"] == "12"
    assert check_usage_in_database(customer) == Decimal("12")


def test_a_read_of_a_past_moment_never_uses_the_snapshot_of_the_present(
    mirror, customer, features, api, django_assert_num_queries
):
    # Given a daily allowance, usage recorded yesterday and a snapshot of today
    customer_services.override_create(
        customer=customer, feature=features["transfer"], limit=Decimal("20"), reset="day",
        reason="daily",
    )  # fmt: skip
    yesterday = timezone.now() - dt.timedelta(days=1)
    batch = {"events": [{"event_id": "old-1", "customer": "acme", "feature": "data-transfer",
                         "quantity": "7", "timestamp": yesterday.isoformat()}]}  # fmt: skip
    assert api.post("/api/v1/usage", batch, format="json").json()["accepted"] == 1
    consume(api, "2", "today")
    assert check(api)["usage"] == "2"
    with django_assert_num_queries(0):
        assert check(api)["usage"] == "2"

    # When an invoice or a report asks about that moment, the database answers it
    assert entitlement_check(customer, "data-transfer", yesterday).usage == Decimal("7")
    # and the snapshot of the present is still the one answered now
    with django_assert_num_queries(0):
        assert check(api)["usage"] == "2"


# --- the write ends sent after the answer (USAGE_SNAPSHOT_END_DEFERRED, the default) --------


def _reader_elsewhere(customer) -> tuple:
    """What a reader in another process gets: no ends of this one's sent first."""
    due, snapshots._ends.due = snapshots._ends.due, []
    try:
        return snapshots.fetch(customer.pk, timezone.now())
    finally:
        snapshots._ends.due = due + snapshots._ends.due


def test_a_deferred_end_keeps_other_readers_on_the_database_until_it_is_sent(
    mirror, customer, api, settings, django_assert_num_queries, monkeypatch
):
    settings.USAGE_SNAPSHOT_END_DEFERRED = True
    check(api)  # a snapshot stored
    # The sending thread not woken: the end stays due
    monkeypatch.setattr(snapshots._ends, "owe", lambda ids: snapshots._ends.due.extend(ids))
    try:
        assert consume(api, "1.5", "deferred-1")["allowed"] is True

        # Then the customer is still marked written: a reader elsewhere uses the database
        assert mirror.get(f"es:d:{customer.pk}") == b"1"
        assert _reader_elsewhere(customer) == (None, None)
        # and a check in this process sends the end first, then reads and stores afresh
        with django_assert_num_queries(1):
            assert check(api)["usage"] == "1.5"
        assert not mirror.exists(f"es:d:{customer.pk}")
        with django_assert_num_queries(0):
            assert check(api)["usage"] == "1.5"
    finally:
        snapshots.ends_flush()


def test_the_next_call_to_redis_carries_the_ends_due(
    mirror, customer, api, settings, django_assert_num_queries, monkeypatch
):
    settings.USAGE_SNAPSHOT_END_DEFERRED = True
    check(api)
    # The sending thread never woken: only the process's next call to Redis can send an end
    monkeypatch.setattr(snapshots._ends, "owe", lambda ids: snapshots._ends.due.extend(ids))
    try:
        for n in range(3):
            assert consume(api, "1", f"carried-{n}")["allowed"] is True
            # Each consume's begin carried the end of the one before: one write in flight
            assert mirror.get(f"es:d:{customer.pk}") == b"1"
            assert snapshots._ends.due == [customer.pk]

        # A reader elsewhere still uses the database; a check here carries the last end
        assert _reader_elsewhere(customer) == (None, None)
        with django_assert_num_queries(1):
            assert check(api)["usage"] == "3"
        assert not mirror.exists(f"es:d:{customer.pk}")
        assert snapshots._ends.due == []
        with django_assert_num_queries(0):
            assert check(api)["usage"] == "3"
    finally:
        snapshots.ends_flush()


def test_ends_taken_by_a_call_that_failed_are_due_again(mirror, customer, settings, monkeypatch):
    import redis

    settings.USAGE_SNAPSHOT_END_DEFERRED = True
    monkeypatch.setattr(snapshots._ends, "owe", lambda ids: snapshots._ends.due.extend(ids))
    monkeypatch.setattr(snapshots._ends, "wake", threading.Event())  # no thread sends them
    with snapshots.write_guard([customer.pk]):
        pass  # a write Redis heard begin: its end is owed
    assert snapshots._ends.due == [customer.pk]
    assert mirror.get(f"es:d:{customer.pk}") == b"1"

    # The next begin takes the end, and Redis fails it
    script = snapshots._script

    def failing(client, name, source):
        if name != "begin":
            return script(client, name, source)

        def call(**_):
            raise redis.ConnectionError("Redis went away")

        return call

    monkeypatch.setattr(snapshots, "_script", failing)
    with snapshots.write_guard([customer.pk]) as guard:
        assert not guard.begun
    # Then the end is due again, not lost
    assert snapshots._ends.due == [customer.pk]

    # and once Redis answers, it is sent: the customer is no longer marked written
    monkeypatch.setattr(snapshots, "_script", script)
    shared_redis.forget()
    snapshots.ends_flush()
    assert snapshots._ends.due == []
    assert not mirror.exists(f"es:d:{customer.pk}")


def test_the_thread_sends_the_ends_of_many_writes_together(mirror, customer, api, settings):
    settings.USAGE_SNAPSHOT_END_DEFERRED = True
    check(api)
    for n in range(5):
        assert consume(api, "1", f"many-{n}")["allowed"] is True

    # Within moments every end has reached Redis, without any read asking for it
    deadline = timezone.now() + dt.timedelta(seconds=5)
    while mirror.exists(f"es:d:{customer.pk}") and timezone.now() < deadline:
        threading.Event().wait(0.01)
    assert not mirror.exists(f"es:d:{customer.pk}")
    assert snapshots._ends.due == []
    snapshot, ticket = _reader_elsewhere(customer)
    assert snapshot is None and ticket is not None  # free to read and store again
    assert check(api)["usage"] == "5"


def test_a_redis_that_lost_its_scripts_is_given_them_again(mirror, customer, api):
    # Given consumes and checks that have loaded the protocol's scripts
    assert consume(api, "2", "before")["entitlement"]["usage"] == "2"
    assert api.get(ENTITLEMENT).json()["usage"] == "2"
    # When Redis forgets them (a restart, SCRIPT FLUSH)
    mirror.script_flush()
    # Then the next calls load them again and answer as before
    assert consume(api, "3", "after")["entitlement"]["usage"] == "5"
    assert api.get(ENTITLEMENT).json()["usage"] == "5"
    assert all(mirror.script_exists(run.args[0].sha) for run in snapshots._scripts.values())


def test_a_reply_cut_short_leaves_no_connection_to_reuse(mirror, monkeypatch):
    import redis

    client = redis.Redis.from_url(mirror.test_url)
    script = client.register_script("return ARGV[1] + 1")
    assert shared_redis.script_run(script, keys=[], args=[1]) == 2
    first = shared_redis._own.connection
    # When the connection breaks while the answer is read
    real = redis.connection.Connection.read_response

    def broken(self, *args, **kwargs):
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(redis.connection.Connection, "read_response", broken)
    with pytest.raises(redis.ConnectionError):
        shared_redis.script_run(script, keys=[], args=[2])
    # Then that connection is closed and forgotten, and the next call opens a new one
    assert first._sock is None and shared_redis._own.connection is None
    monkeypatch.setattr(redis.connection.Connection, "read_response", real)
    assert shared_redis.script_run(script, keys=[], args=[3]) == 4
    assert shared_redis._own.connection is not first


def test_the_scripts_connection_blocks_with_the_kernel_keeping_its_timeout(mirror):
    """One send and one receive per call (no poll() before each), and a server that stops
    answering still costs only the timeout."""
    import socket as sockets
    import struct
    import time

    import hiredis
    import redis

    client = redis.Redis.from_url(mirror.test_url, socket_timeout=0.3)
    script = client.register_script("return 7")
    assert shared_redis.script_run(script, keys=[], args=[]) == 7
    sock = shared_redis._own.connection._sock
    assert sock.gettimeout() is None  # blocking: Python polls nothing
    seconds, micros = struct.unpack(
        "ll", sock.getsockopt(sockets.SOL_SOCKET, sockets.SO_RCVTIMEO, 16)
    )
    assert (seconds, micros) == (0, 300_000)

    # A server that answers the handshake, then never a script (hung, or unreachable)
    listener = sockets.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        peer, _ = listener.accept()
        reader = hiredis.Reader()
        with peer:
            while data := peer.recv(65536):
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    if command[0].upper() != b"EVALSHA":
                        peer.sendall(b"+OK\r\n")

    threading.Thread(target=serve, daemon=True).start()
    hung = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.3, protocol=2)
    started = time.monotonic()
    with pytest.raises(redis.RedisError):
        shared_redis.script_run(hung.register_script("return 7"), keys=[], args=[])
    assert 0.25 < time.monotonic() - started < 2
    assert shared_redis._own.connection is None  # closed, not reused
    listener.close()
