"""End to end with a real Redis broker and a real Celery worker process (DESIGN.md
"Notifications"): emails land as files in the worker's outbox, exactly once each, and a broker
outage delays a notification without losing it or failing the request.

Runs when TEST_REDIS_URL is set and the database is PostgreSQL (CI); it uses Redis db 5 of that
server, flushed before and after.
"""

import datetime as dt
import email
import os
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest
from django.conf import settings
from django.db import connection

from customers import tasks
from customers.engine import entitlement_consume
from customers.models import Grant, GrantSource, Notification, NotificationStatus
from customers.tests.notification_helpers import storage_given
from entitlements_site.celery import app as celery_app

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
DEAD_BROKER_URL = "redis://127.0.0.1:6390/0"
REDIS_DB = "/5"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not TEST_REDIS_URL or connection.vendor != "postgresql",
        reason="needs TEST_REDIS_URL and PostgreSQL (CI)",
    ),
]


def wait_for(predicate, *, timeout: float, what: str, worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    log = "\n".join(worker.log[-40:]) if worker else ""
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}\n{log}")


class Worker:
    """`celery -A entitlements_site worker --pool=solo` on the test database and broker."""

    def __init__(self, *, broker_url: str, outbox: Path):
        db = connection.settings_dict
        auth = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
        host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        env = os.environ | {
            "DATABASE_URL": f"postgres://{auth}@{host}/{db['NAME']}",
            "CELERY_BROKER_URL": broker_url,
            "EMAIL_FILE_PATH": str(outbox),
            "DJANGO_SETTINGS_MODULE": "entitlements_site.settings",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("EMAIL_URL", None)
        celery = Path(sys.executable).with_name("celery")
        command = [str(celery)] if celery.exists() else [sys.executable, "-m", "celery"]
        command += ["-A", "entitlements_site", "worker", "--pool=solo", "-l", "info"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        command += ["-n", f"itest-{uuid.uuid4().hex[:8]}@%h"]
        self.log: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.log.append(line.rstrip())
            if " ready." in line:
                self.ready.set()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def point_web_at(broker_url: str | None) -> None:
    """This process (the web side) publishes to `broker_url` from now on. (broker_write_url:
    the environment's CELERY_BROKER_URL, set in CI, would win over broker_url.)"""
    celery_app.conf.broker_write_url = broker_url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def outbox_texts(outbox: Path) -> list[str]:
    """The text part of each email the file backend wrote, oldest first."""
    texts = []
    for path in sorted(outbox.glob("*.log"), key=lambda p: p.stat().st_mtime_ns):
        for raw in path.read_text().split("-" * 79):
            if raw.strip():
                message = email.message_from_string(raw.lstrip("\n"))
                part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
                texts.append(
                    f"Subject: {message['Subject']}\n\n" + part.get_payload(decode=True).decode()
                )
    return texts


@pytest.fixture
def redis_url():
    import redis

    url = urlparse(TEST_REDIS_URL)._replace(path=REDIS_DB).geturl()
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    client.flushdb()
    previous = celery_app.conf.get("broker_write_url")
    point_web_at(url)
    yield url
    point_web_at(previous)
    client.flushdb()
    client.close()


def test_emails_through_a_real_worker_once_each_and_none_lost_when_the_broker_is_down(
    redis_url, tmp_path
):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    storage = storage_given()
    period_end = storage.subscription.current_period_end
    worker = Worker(broker_url=redis_url, outbox=outbox)
    try:
        assert worker.ready.wait(30), "\n".join(worker.log[-40:])

        def consume(quantity, event_id, **kwargs):
            result = entitlement_consume(
                storage.customer, storage.feature.key, quantity, event_id, **kwargs
            )
            assert result.allowed
            return result

        def emails(n):
            wait_for(
                lambda: len(outbox_texts(outbox)) >= n,
                timeout=20,
                what=f"{n} emails",
                worker=worker,
            )
            texts = outbox_texts(outbox)
            assert len(texts) == n
            return texts

        # Past 80%: exactly one email, with the figures
        consume("79", "e1")
        consume("2", "e2")
        first = emails(1)[0]
        assert "Subject: You have used 80% of your Storage" in first
        assert "Used:   81 GB of 100 GB" in first
        assert "Left:   19 GB" in first
        assert "http://127.0.0.1:8000/dashboard/plans/" in first

        # Past 100%: one more
        consume("19", "e3")
        second = emails(2)[1]
        assert "Subject: You have used 100% of your Storage" in second
        assert "Left:   0 GB" in second

        # Crossing 80% again in the same period (a top-up lowered the percentage): nothing
        Grant.objects.create(
            customer=storage.customer,
            feature=storage.feature,
            quantity=Decimal("100"),
            source=GrantSource.TOPUP,
            expires_at=period_end,
        )
        consume("70", "e4")  # 170 of 200: 85%
        time.sleep(1)
        assert len(outbox_texts(outbox)) == 2
        assert Notification.objects.count() == 2

        # A new period starts over
        next_period = period_end + dt.timedelta(hours=1)
        consume("85", "e5", timestamp=next_period)
        third = emails(3)[2]
        assert "Subject: You have used 80% of your Storage" in third
        assert "Used:   85 GB of 100 GB" in third

        # The broker is down while usage crosses 100%: the request still succeeds, fast
        point_web_at(DEAD_BROKER_URL)
        started = time.monotonic()
        consume("15", "e6", timestamp=next_period)
        assert time.monotonic() - started < 5
        pending = Notification.objects.get(threshold=100, period_start=period_end)
        assert pending.status == NotificationStatus.PENDING
        time.sleep(1)
        assert len(outbox_texts(outbox)) == 3

        # The broker is back: the sweep delivers it, exactly once
        point_web_at(redis_url)
        assert tasks.notifications_sweep(due_within_seconds=120) == 1
        fourth = emails(4)[3]
        assert "Subject: You have used 100% of your Storage" in fourth
        wait_for(
            lambda: Notification.objects.filter(status=NotificationStatus.PENDING).count() == 0,
            timeout=10,
            what="no pending notification",
        )
        assert tasks.notifications_sweep(due_within_seconds=120) == 0
        time.sleep(1)
        assert len(outbox_texts(outbox)) == 4
        assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}
        assert list(Notification.objects.values_list("attempts", flat=True)) == [1, 1, 1, 1]
    finally:
        worker.stop()
