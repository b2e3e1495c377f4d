"""Fault tests (issue 16, item 8): the check's Redis snapshot is never stale, whatever happens
to the web processes that wrote while Redis could not be reached.

A worker that consumes while Redis is hung cannot tell Redis that the customer's snapshot is
void. When that worker then ends (reloaded with `kill -HUP`, or killed) before Redis is back,
the workers that replace it must still never answer the snapshot Redis kept. Real processes:
gunicorn with two sync workers on production settings and a redis-server of the test's own
(helpers from test_faults.py). They run when TEST_REDIS_URL is set and the database is
PostgreSQL (CI), like their neighbours.
"""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from core.services import api_key_create
from customers.models import UsageEvent
from customers.tests.notification_helpers import storage_given
from customers.tests.test_faults import REDIS_SERVER, TEST_REDIS_URL, Api, Gunicorn, RedisServer
from customers.tests.test_notifications_integration import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not TEST_REDIS_URL or connection.vendor != "postgresql" or not REDIS_SERVER,
        reason="needs TEST_REDIS_URL, PostgreSQL and redis-server (CI)",
    ),
]


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def worker_pids(master: int) -> set[int]:
    """The pids of gunicorn's workers: the master's children, read from /proc."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == master:
            pids.add(int(stat.parent.name))
    return pids


@pytest.mark.parametrize("ending", ["reloaded", "killed"])
def test_workers_that_wrote_while_redis_hung_then_ended_leave_no_stale_snapshot(
    ending, own_redis, tmp_path
):
    # Given gunicorn with two workers whose checks are answered from snapshots in our Redis,
    # and a customer with 10 of 200 units used, its snapshot mirrored
    storage = storage_given(limit="200", notify_at=())
    customer, feature = storage.customer.external_id, storage.feature.key
    key = api_key_create(name="snapshot faults")[1]
    web = Gunicorn(log_path=tmp_path / "gunicorn.log", workers=2, CACHE_URL=own_redis.url(1))
    try:
        api = Api(web.url, key)
        entitlement = f"/customers/{customer}/entitlements/{feature}"
        consumed = api.post(f"{entitlement}/consume", {"quantity": "10", "event_id": "c-1"})
        assert consumed.json()["allowed"] is True
        for _ in range(4):
            assert api.get(entitlement).json()["usage"] == "10"
        with own_redis.client(db=1) as client:
            assert client.exists(f"es:s:{storage.customer.pk}"), "no snapshot mirrored"

        # When Redis hangs, both workers fail a Redis call (four checks at once keep both
        # busy), and one of them consumes 50 units, which Redis cannot hear of
        own_redis.freeze()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: api.get(entitlement), range(4)))
        assert [a.json()["usage"] for a in answers] == ["10"] * 4
        consumed = api.post(f"{entitlement}/consume", {"quantity": "50", "event_id": "c-2"})
        assert consumed.json()["allowed"] is True
        assert consumed.json()["entitlement"]["usage"] == "60"
        assert "Redis unavailable for the hot path" in web.log()

        # and every worker ends before Redis is back: reloaded (HUP) or killed (SIGKILL;
        # the master starts new ones)
        before = worker_pids(web.process.pid)
        assert len(before) == 2, before
        if ending == "reloaded":
            os.kill(web.process.pid, signal.SIGHUP)
        else:
            for pid in before:
                os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            now = worker_pids(web.process.pid)
            return len(now) == 2 and not now & before

        wait_for(replaced, timeout=30, what="two new gunicorn workers")
        own_redis.thaw()
        with own_redis.client(db=1) as client:
            assert client.exists(f"es:s:{storage.customer.pk}"), "Redis lost the old snapshot"

        # Then every check answers what the ledger says (60 used, 140 left), never the
        # snapshot Redis kept (10 used, 190 left), on either worker
        with ThreadPoolExecutor(2) as pool:
            checks = [a.json() for a in pool.map(lambda _: api.get(entitlement), range(6))]
        assert [(c["usage"], c["balance"]) for c in checks] == [("60", "140")] * 6
        time.sleep(1.1)  # past any worker's pause after a failure: the mirror is in use again
        for _ in range(4):
            check = api.get(entitlement).json()
            assert (check["usage"], check["balance"]) == ("60", "140")

        # and a consume beyond what is left is refused, in agreement with the checks
        refused = api.post(f"{entitlement}/consume", {"quantity": "150", "event_id": "c-3"})
        assert refused.json()["allowed"] is False
        assert refused.json()["entitlement"]["balance"] == "140"
        quantities = UsageEvent.objects.filter(customer=storage.customer).values_list(
            "quantity", flat=True
        )
        assert sum(quantities, Decimal("0")) == Decimal("60")
        with own_redis.client(db=1) as client:
            assert client.exists(f"es:s:{storage.customer.pk}"), "the mirror is not in use"
    finally:
        web.stop()
