"""Fault tests (issue 9): the promises of DESIGN.md while Redis, a Celery worker or the
database connections fail, with real processes (gunicorn on production settings, Celery
workers, redis-server).

- Redis killed, or hung (SIGSTOP): checks, consumes and batch ingestion keep answering over
  HTTP, promptly (the rate limit counts in that Redis and fails open; queueing an email gives
  up); a threshold crossed meanwhile stays pending, and after Redis returns every email goes
  out exactly once, even with the sweep run twice and a timed-out publish landing late.
- A Celery worker killed inside a send (its pool process, or the whole worker): the email goes
  out exactly once.
- Database connections dropped during batch ingestion (under the live server and gunicorn):
  every event whose request returned 2xx is stored, none twice after the client's retries, and
  the counters equal the events; a request whose connection drops answers the API's error JSON
  (503 `unavailable`, Retry-After), so the client retries.

Each test starts its own redis-server on a free port (never the shared one), its own workers
and web servers, bounds every wait, and stops them in `finally`. They run when TEST_REDIS_URL
is set and the database is PostgreSQL (CI).
"""

import contextlib
import email
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from django.conf import settings
from django.db import connection, transaction

from core.services import api_key_create
from customers import tasks
from customers.engine import entitlement_consume
from customers.models import Notification, NotificationStatus, UsageCounter, UsageEvent
from customers.tests.notification_helpers import storage_given
from customers.tests.test_notifications_integration import outbox_texts, point_web_at, wait_for
from entitlements_site.celery import app as celery_app

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
REDIS_SERVER = shutil.which("redis-server")
FAULT_SETTINGS = "customers.tests.fault_settings"
HTTP_TIMEOUT = (3, 15)  # connect, read: a hung request fails the test instead of hanging it

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not TEST_REDIS_URL or connection.vendor != "postgresql" or not REDIS_SERVER,
        reason="needs TEST_REDIS_URL, PostgreSQL and redis-server (CI)",
    ),
]


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session and everything it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


class RedisServer:
    """A redis-server of this test's own on a free port; `stop()` is an outage (SIGKILL),
    `start()` brings it back, empty, on the same port."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(
            port=self.port,
            db=db,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # redis-py retries 3 times with backoff by default
        )

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except Exception:  # noqa: BLE001 (any connection failure)
            return False

    def start(self) -> None:
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        command += ["--dir", str(self.directory)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for(self.answers, timeout=10, what=f"redis-server on port {self.port}")

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted (by the kernel) but never answered, as with a
        hung server or a network partition."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        wait_for(self.answers, timeout=10, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process)
        wait_for(lambda: not self.answers(), timeout=5, what="redis-server to stop")


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker(own_redis):
    """This process publishes tasks to our own Redis (never the shared one)."""
    previous = celery_app.conf.get("broker_write_url")
    point_web_at(own_redis.url(0))
    try:
        yield own_redis.url(0)
    finally:
        point_web_at(previous)


def database_url() -> str:
    """The URL of the test database, for the processes the tests start."""
    db = connection.settings_dict
    auth = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def child_env(**extra) -> dict:
    """The environment of a worker or web process on the test database; no shared broker."""
    env = os.environ | {"DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1"}
    for name in ("EMAIL_URL", "CELERY_BROKER_URL", "CACHE_URL"):
        env.pop(name, None)
    return env | {k: str(v) for k, v in extra.items()}


class Worker:
    """A Celery worker process on the test database and our own broker, in its own session
    (so that its pool processes are killed with it). `log` keeps its output."""

    def __init__(
        self,
        *,
        broker_url: str,
        outbox: Path,
        settings_module: str = "entitlements_site.settings",
        pool: str = "solo",
        **extra_env,
    ):
        env = child_env(
            CELERY_BROKER_URL=broker_url,
            EMAIL_FILE_PATH=outbox,
            DJANGO_SETTINGS_MODULE=settings_module,
            **extra_env,
        )
        celery = Path(sys.executable).with_name("celery")
        command = [str(celery)] if celery.exists() else [sys.executable, "-m", "celery"]
        command += ["-A", "entitlements_site", "worker", f"--pool={pool}", "-l", "info"]
        if pool == "prefork":
            command += ["--concurrency=1"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        command += ["-n", f"fault-{uuid.uuid4().hex[:8]}@%h"]
        self.log: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30):
            self.stop()
            raise AssertionError("The worker did not start:\n" + "\n".join(self.log[-40:]))

    def _read(self):
        for line in self.process.stdout:
            self.log.append(line.rstrip())
            if " ready." in line:
                self.ready.set()

    def sends_finished(self) -> list[str]:
        """What each finished notification_send returned ("True": sent now; "False": nothing
        to do), from the worker's log."""
        return [
            line.rsplit(": ", 1)[-1]
            for line in list(self.log)
            if "customers.tasks.notification_send[" in line and " succeeded in " in line
        ]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        kill_group(self.process)


def emails_in(outbox: Path, n: int, *, worker: Worker) -> list[str]:
    wait_for(
        lambda: len(outbox_texts(outbox)) >= n, timeout=20, what=f"{n} email(s)", worker=worker
    )
    return outbox_texts(outbox)


def dirs(tmp_path) -> tuple[Path, Path]:
    outbox, control = tmp_path / "outbox", tmp_path / "control"
    outbox.mkdir()
    control.mkdir()
    return outbox, control


def stalled_pid(control: Path, worker: Worker) -> int:
    """The pid of the process that is now inside the stalled send (slow_mail)."""
    wait_for(lambda: list(control.glob("stalled-*")), timeout=20, what="a send", worker=worker)
    return int(next(control.glob("stalled-*")).name.split("-")[1])


class Gunicorn:
    """The production web server: sync workers that keep their database connection between
    requests (CONN_MAX_AGE, checked by CONN_HEALTH_CHECKS at each request's start)."""

    def __init__(self, *, log_path: Path, workers: int = 2, **extra_env):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = child_env(
            DJANGO_DEBUG="false",
            DJANGO_SECRET_KEY="fault-tests-" + uuid.uuid4().hex * 2,
            DJANGO_ALLOWED_HOSTS="127.0.0.1",
            DJANGO_SETTINGS_MODULE="entitlements_site.settings",
            **extra_env,
        )
        gunicorn = Path(sys.executable).with_name("gunicorn")
        command = [str(gunicorn), "entitlements_site.wsgi:application", "-b", f"127.0.0.1:{port}"]
        command += ["-w", str(workers), "--timeout", "30", "--graceful-timeout", "5"]
        self.log_path = log_path
        self.log_file = log_path.open("w")
        self.process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def up() -> bool:
            try:
                return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_for(up, timeout=20, what="gunicorn")
        except AssertionError as error:
            self.stop()
            raise AssertionError(log_path.read_text()[-3000:]) from error

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        kill_group(self.process)
        self.log_file.close()

    def log(self) -> str:
        return self.log_path.read_text()


# --- HTTP ---------------------------------------------------------------------------------


class Api:
    def __init__(self, base_url: str, key: str):
        self.base = f"{base_url}/api/v1"
        self.headers = {"Authorization": f"Bearer {key}", "Connection": "close"}

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, headers=self.headers, timeout=HTTP_TIMEOUT)

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(
            self.base + path, json=body, headers=self.headers, timeout=HTTP_TIMEOUT
        )


@pytest.fixture
def api_key(transactional_db):
    return api_key_create(name="fault tests")[1]


# --- 1. Redis stopped ---------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["killed", "frozen"])
def test_redis_down_the_api_keeps_answering_and_the_emails_go_once_when_it_is_back(
    outage, own_redis, broker, tmp_path, api_key
):
    # Given gunicorn with production settings: the rate limit counts in our Redis
    # (CACHE_URL), which is also the broker; 50% of the allowance used, its email queued
    outbox, _ = dirs(tmp_path)
    storage = storage_given(notify_at=(50, 80))  # 100 GB a month
    customer, feature = storage.customer.external_id, storage.feature.key
    web = Gunicorn(
        log_path=tmp_path / "gunicorn.log",
        workers=1,  # the process that queued the first email is the one that meets the outage
        CACHE_URL=own_redis.url(1),
        CELERY_BROKER_URL=own_redis.url(0),
    )
    worker = None
    try:
        api = Api(web.url, api_key)
        entitlement = f"/customers/{customer}/entitlements/{feature}"
        body = {"quantity": "50", "event_id": "c-1"}
        assert api.post(f"{entitlement}/consume", body).json()["allowed"] is True
        with own_redis.client(db=1) as client:
            assert client.keys("*throttle:apikey:*"), "the rate limit does not count in Redis"
        with own_redis.client() as client:
            assert client.llen("celery") == 1  # the 50% email's task
        # and a check answered from (and mirrored into) the usage snapshot in Redis
        assert api.get(entitlement).json()["usage"] == "50"
        assert api.get(entitlement).json()["usage"] == "50"
        with own_redis.client(db=1) as client:
            assert client.keys("es:s:*"), "the check did not mirror its snapshot in Redis"

        # When Redis dies (restarting empty: the queued task is lost), or hangs
        if outage == "killed":
            own_redis.stop()
        else:
            own_redis.freeze()
        took = {}

        def timed(name, call, *args):
            started = time.monotonic()
            response = call(*args)
            took[name] = round(time.monotonic() - started, 2)
            assert response.status_code == 200, response.text
            return response.json()

        # Then checks, batches and consumes still answer, promptly
        assert timed("check", api.get, entitlement)["has_access"] is True
        events = [
            {"event_id": f"r-{i}", "customer": customer, "feature": feature, "quantity": "5"}
            for i in range(3)
        ]
        assert timed("batch", api.post, "/usage", {"events": events})["accepted"] == 3
        consumed = timed(
            "consume crossing 80%",
            api.post,
            f"{entitlement}/consume",
            {"quantity": "20", "event_id": "c-2"},
        )
        assert consumed["allowed"] is True
        assert consumed["entitlement"]["usage"] == "85"
        assert timed("check again", api.get, entitlement)["usage"] == "85"
        print(f"\nRedis {outage}: seconds per request {took}")
        # The rate limit failed open; queueing the email gave up (the crossing consume)
        assert max(t for name, t in took.items() if name != "consume crossing 80%") < 1, took
        assert took["consume crossing 80%"] < 5, took
        assert "Redis unavailable for the hot path" in web.log()
        assert "Could not queue customers.tasks.notification_send" in web.log()

        # and the 80% email waits, pending, in the outbox table
        pending = Notification.objects.get(customer=storage.customer, threshold=80)
        assert (pending.status, pending.attempts) == (NotificationStatus.PENDING, 0)

        # When Redis is back and the sweep runs twice before a worker takes the sends
        if outage == "killed":
            own_redis.start()
        else:
            own_redis.thaw()
        # The snapshot Redis kept while hung (50 GB) is never answered: the writes made during
        # the outage left debts in the database, settled before Redis is used again
        time.sleep(1.1)  # past the pause after a failure
        assert api.get(entitlement).json()["usage"] == "85"
        assert api.get(entitlement).json()["usage"] == "85"
        assert tasks.notifications_sweep(due_within_seconds=300) == 2  # 50% and 80%
        assert tasks.notifications_sweep(due_within_seconds=300) == 2
        time.sleep(0.5)
        with own_redis.client() as client:
            # The hung Redis kept the first task; a publish that timed out on it may have
            # landed when it resumed
            queued = client.llen("celery")
        assert queued in ((4,) if outage == "killed" else (5, 6)), queued
        worker = Worker(broker_url=own_redis.url(0), outbox=outbox)

        # Then each email goes out exactly once: the other sends find it sent
        texts = emails_in(outbox, 2, worker=worker)
        wait_for(
            lambda: len(worker.sends_finished()) == queued,
            timeout=20,
            what=f"{queued} sends",
            worker=worker,
        )
        assert sorted(worker.sends_finished()) == ["False"] * (queued - 2) + ["True"] * 2
        assert len(outbox_texts(outbox)) == 2
        subjects = sorted(text.splitlines()[0] for text in texts)
        assert subjects == [
            "Subject: You have used 50% of your Storage",
            "Subject: You have used 80% of your Storage",
        ]
        for notification in Notification.objects.filter(customer=storage.customer):
            assert notification.status == NotificationStatus.SENT
            assert notification.attempts == 1
        assert tasks.notifications_sweep(due_within_seconds=300) == 0
    finally:
        web.stop()
        if worker is not None:
            worker.stop()


# --- 2. A worker killed inside a send -----------------------------------------------------


def test_a_pool_process_killed_inside_a_send_is_redelivered_and_the_email_goes_once(
    broker, tmp_path
):
    # Given a prefork worker whose next send stalls before writing the email
    outbox, control = dirs(tmp_path)
    (control / "stall").touch()
    storage = storage_given()
    worker = Worker(
        broker_url=broker,
        outbox=outbox,
        settings_module=FAULT_SETTINGS,
        pool="prefork",
        SLOW_MAIL_DIR=control,
        SLOW_MAIL_SECONDS=60,
    )
    try:
        # When usage crosses 80% and the pool process is SIGKILLed inside the send
        entitlement_consume(storage.customer, storage.feature.key, "85", "e1")
        pid = stalled_pid(control, worker)
        assert pid != worker.process.pid  # a pool process, not the worker itself
        os.kill(pid, signal.SIGKILL)

        # Then the worker requeues the task (acks_late, reject_on_worker_lost), a new pool
        # process sends it, and the email goes out exactly once
        texts = emails_in(outbox, 1, worker=worker)
        wait_for(lambda: worker.sends_finished() == ["True"], timeout=20, what="the send")
        assert any("WorkerLostError" in line for line in worker.log), "\n".join(worker.log)
        time.sleep(1)
        assert len(outbox_texts(outbox)) == 1
        assert "Subject: You have used 80% of your Storage" in texts[0]
        notification = Notification.objects.get(customer=storage.customer)
        assert notification.status == NotificationStatus.SENT
        # Every try counts, the killed one too: it was claimed before the send began
        assert notification.attempts == 2
    finally:
        worker.stop()


def test_a_worker_killed_inside_a_send_then_replaced_sends_the_email_once(broker, tmp_path):
    # Given a worker whose next send stalls before writing the email
    outbox, control = dirs(tmp_path)
    (control / "stall").touch()
    storage = storage_given()
    first = Worker(
        broker_url=broker,
        outbox=outbox,
        settings_module=FAULT_SETTINGS,
        SLOW_MAIL_DIR=control,
        SLOW_MAIL_SECONDS=60,
    )
    second = None
    try:
        # When usage crosses 80% and the whole worker is SIGKILLed inside the send
        entitlement_consume(storage.customer, storage.feature.key, "85", "e1")
        assert stalled_pid(control, first) == first.process.pid
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=5)

        # Then nothing was sent, the try was counted (claimed before the send), and its lock
        # on the row went with its connection
        notification = Notification.objects.get(customer=storage.customer)
        assert notification.status == NotificationStatus.PENDING
        assert notification.attempts == 1

        def row_unlocked() -> bool:
            with transaction.atomic():
                return (
                    Notification.objects.select_for_update(skip_locked=True)
                    .filter(pk=notification.pk)
                    .exists()
                )

        wait_for(row_unlocked, timeout=10, what="the dead worker's row lock to go")
        assert outbox_texts(outbox) == []

        # When a new worker starts (its broker gives back a message unacknowledged for 2 s)
        # and the sweep queues the pending notification as well
        second = Worker(
            broker_url=broker,
            outbox=outbox,
            settings_module=FAULT_SETTINGS,
            SLOW_MAIL_DIR=control,
            FAULT_VISIBILITY_SECONDS=2,
        )
        assert tasks.notifications_sweep(due_within_seconds=300) == 1

        # Then both the redelivered task and the swept one run, and one email goes out
        texts = emails_in(outbox, 1, worker=second)
        wait_for(
            lambda: len(second.sends_finished()) == 2, timeout=20, what="2 sends", worker=second
        )
        assert sorted(second.sends_finished()) == ["False", "True"]
        assert len(outbox_texts(outbox)) == 1
        assert "Subject: You have used 80% of your Storage" in texts[0]
        notification.refresh_from_db()
        assert notification.status == NotificationStatus.SENT
        assert notification.attempts == 2  # the killed try and the one that sent it
    finally:
        first.stop()
        if second is not None:
            second.stop()


def message_ids(outbox: Path) -> list[str]:
    """The Message-ID of each email the file backend wrote, oldest first."""
    ids = []
    for path in sorted(outbox.glob("*.log"), key=lambda p: p.stat().st_mtime_ns):
        for raw in path.read_text().split("-" * 79):
            if raw.strip():
                ids.append(email.message_from_string(raw.lstrip("\n"))["Message-ID"])
    return ids


def test_a_worker_killed_after_the_server_took_the_email_sends_it_again_under_one_message_id(
    broker, tmp_path
):
    # Given a worker whose next send stalls after the mail server accepted the email
    outbox, control = dirs(tmp_path)
    (control / "stall").touch()
    storage = storage_given()
    first = Worker(
        broker_url=broker,
        outbox=outbox,
        settings_module=FAULT_SETTINGS,
        SLOW_MAIL_DIR=control,
        SLOW_MAIL_SECONDS=60,
        SLOW_MAIL_AFTER=1,
    )
    second = None
    try:
        # When usage crosses 80% and the worker is SIGKILLed before it records "sent"
        entitlement_consume(storage.customer, storage.feature.key, "85", "e1")
        assert stalled_pid(control, first) == first.process.pid
        emails_in(outbox, 1, worker=first)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=5)

        # Then the try is counted (claimed before the send) and the row is still pending
        notification = Notification.objects.get(customer=storage.customer)
        assert (notification.status, notification.attempts) == (NotificationStatus.PENDING, 1)

        # When a new worker takes the task back (unacknowledged for 2 s)
        second = Worker(
            broker_url=broker,
            outbox=outbox,
            settings_module=FAULT_SETTINGS,
            SLOW_MAIL_DIR=control,
            FAULT_VISIBILITY_SECONDS=2,
        )
        emails_in(outbox, 2, worker=second)
        wait_for(lambda: second.sends_finished() == ["True"], timeout=20, what="the resend")

        # Then the receiver got it twice under one Message-ID derived from the row (so it
        # drops the second), and the row counts both tries and is sent
        ids = message_ids(outbox)
        assert len(ids) == 2 and ids[0] == ids[1]
        assert ids[0].startswith(f"<notification.{notification.pk}.")
        notification.refresh_from_db()
        assert (notification.status, notification.attempts) == (NotificationStatus.SENT, 2)
    finally:
        first.stop()
        if second is not None:
            second.stop()


def _terminate_idle_in_transaction() -> int:
    """Terminates the other connections to the test database that are inside a transaction
    (the worker's, stalled in its send), as a database restart would. Returns how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND state = 'idle in transaction'"
        )
        return len(cursor.fetchall())


def test_a_database_lost_during_a_send_is_retried_by_the_task_without_waiting_for_the_sweep(
    broker, tmp_path
):
    # Given a worker whose next send stalls 3 s, its row locked in an open transaction
    outbox, control = dirs(tmp_path)
    (control / "stall").touch()
    storage = storage_given()
    worker = Worker(
        broker_url=broker,
        outbox=outbox,
        settings_module=FAULT_SETTINGS,
        SLOW_MAIL_DIR=control,
        SLOW_MAIL_SECONDS=3,
    )
    try:
        # When usage crosses 80% and the database drops the worker's connection mid-send
        entitlement_consume(storage.customer, storage.feature.key, "85", "e1")
        stalled_pid(control, worker)
        assert _terminate_idle_in_transaction() == 1

        # Then the task retries the database error itself, with backoff (no sweep runs here:
        # it would wait 2 minutes), and the email is marked sent within seconds
        def sent() -> bool:
            return Notification.objects.get(customer=storage.customer).status == "sent"

        wait_for(sent, timeout=45, what="the email marked sent", worker=worker)
        assert any("Retry in" in line for line in worker.log), "\n".join(worker.log[-40:])
        notification = Notification.objects.get(customer=storage.customer)
        assert notification.attempts == 2
        ids = message_ids(outbox)
        assert len(set(ids)) == 1 and 1 <= len(ids) <= 2  # the stalled one, if it got out
    finally:
        worker.stop()


# --- 3. Database connections dropped during batch ingestion --------------------------------


@pytest.fixture(params=["live_server", "gunicorn"])
def web(request, transactional_db, tmp_path):
    """The URL of a web server on the test database: pytest-django's live server (a new
    connection per request) or gunicorn (persistent connections)."""
    if request.param == "live_server":
        yield request.getfixturevalue("live_server").url
        return
    server = Gunicorn(log_path=tmp_path / "gunicorn.log")
    try:
        yield server.url
    finally:
        server.stop()


class Faults:
    """Drops the web servers' database connections from a connection of its own, in rounds
    alternating two ways: `mid_transaction` (lock the customer's usage counters, wait until a
    request blocks on them, terminate that request's connection, release) always hits a
    request inside its transaction; `anytime` terminates every other connection at a random
    moment (in a request, at its commit, or idle between requests)."""

    def __init__(self, *, customer_id: int, spare_pids: set[int], hits: int, seconds: float):
        import psycopg

        db = connection.settings_dict
        self.conn = psycopg.connect(
            dbname=db["NAME"],
            user=db["USER"] or None,
            password=db["PASSWORD"] or None,
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            connect_timeout=5,
            autocommit=True,
        )
        self.conn.execute("SET lock_timeout = '2s'")
        self.customer_id = customer_id
        self.spare = sorted(spare_pids)
        self.hits, self.seconds = hits, seconds
        self.terminated = {"mid_transaction": 0, "anytime": 0}
        self.mid_transaction_hits = 0  # rounds that dropped a request inside its transaction
        self.log: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def _others(self, extra: str = "") -> list[int]:
        # Inside a transaction pg_stat_activity keeps the snapshot of its first read: refresh.
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
            f"AND NOT (pid = ANY(%s)) {extra}",
            [self.spare],
        ).fetchall()
        return [pid for (pid,) in rows]

    def _terminate(self, pids: list[int]) -> int:
        if not pids:
            return 0
        rows = self.conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest(%s::int[]) pid",
            [pids],
        ).fetchone()
        return rows[0]

    def mid_transaction(self, locked: threading.Event | None = None) -> None:
        """One mid-transaction round; `locked` is set once the counters are locked."""
        table = UsageCounter._meta.db_table
        try:
            with self.conn.transaction():
                self.conn.execute(
                    f"SELECT 1 FROM {table} WHERE customer_id = %s ORDER BY id FOR UPDATE",
                    [self.customer_id],
                )
                if locked is not None:
                    locked.set()
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    blocked = self._others("AND wait_event_type = 'Lock'")
                    if blocked:
                        killed = self._terminate(blocked)
                        self.terminated["mid_transaction"] += killed
                        self.mid_transaction_hits += killed > 0
                        self.log.append(f"mid_transaction: {killed}")
                        return
                    time.sleep(0.01)
                self.log.append("mid_transaction: no request blocked within 2 s")
        except Exception as error:  # noqa: BLE001 (a lock timeout: the round is skipped)
            self.log.append(f"mid_transaction skipped: {error!r}")

    def run(self) -> None:
        """Alternates the two kinds of round until `hits` mid-transaction drops and as many
        anytime rounds are done (a round whose request did not come in time is not counted:
        the machine may be busy), for at most `seconds`."""
        deadline = time.monotonic() + self.seconds
        anytime_rounds = 0
        try:
            while time.monotonic() < deadline and (
                self.mid_transaction_hits < self.hits or anytime_rounds < self.hits
            ):
                time.sleep(random.uniform(0.1, 0.3))
                if self.mid_transaction_hits < self.hits:
                    self.mid_transaction()
                time.sleep(random.uniform(0.05, 0.3))
                if anytime_rounds < self.hits:
                    killed = self._terminate(self._others())
                    self.terminated["anytime"] += killed
                    self.log.append(f"anytime: {killed}")
                    anytime_rounds += 1
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            self.error = error
        finally:
            self.done.set()

    def idle_connections_drop(self) -> int:
        """Terminates every other connection while no request runs: persistent ones only."""
        return self._terminate(self._others())

    def close(self) -> None:
        self.conn.close()


def test_database_connections_dropped_during_batch_ingestion_lose_and_double_nothing(web, api_key):
    # Given a customer with a large monthly allowance (no notifications) and clients sending
    # batches of 50 events, each retried with the same event ids until it gets a 2xx
    storage = storage_given(limit="1000000", notify_at=())
    customer, feature = storage.customer.external_id, storage.feature.key
    api = Api(web, api_key)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        test_pid = cursor.fetchone()[0]
    quantities = ["1", "2.5", "0.25", "10"]
    sent: dict[str, Decimal] = {}
    batches: list[list[dict]] = []
    outcomes: list[list[tuple]] = []  # per batch: (status | error name, seconds, body start)
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + 35

    def batch_new() -> int:
        with lock:
            b = len(batches)
            events = [
                {
                    "event_id": f"b{b}-e{e}",
                    "customer": customer,
                    "feature": feature,
                    "quantity": random.choice(quantities),
                }
                for e in range(50)
            ]
            batches.append(events)
            outcomes.append([])
            sent.update((ev["event_id"], Decimal(ev["quantity"])) for ev in events)
            return b

    def send(b: int) -> bool:
        for _ in range(30):
            started = time.monotonic()
            try:
                response = api.post("/usage", {"events": batches[b]})
            except requests.RequestException as error:
                outcomes[b].append((type(error).__name__, time.monotonic() - started, ""))
            else:
                took = time.monotonic() - started
                outcomes[b].append((response.status_code, took, response.text[:120]))
                if 200 <= response.status_code < 300:
                    return True
            time.sleep(0.05)
        return False

    def client():
        # At least 10 batches each, and on until the faults are over
        while time.monotonic() < deadline and not stop.is_set():
            b = batch_new()
            if not send(b) or (faults.done.is_set() and len(batches) >= 20):
                return

    send(batch_new())  # the counters exist: the mid-transaction rounds lock them
    faults = Faults(customer_id=storage.customer.pk, spare_pids={test_pid}, hits=5, seconds=25)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    injector = threading.Thread(target=faults.run, daemon=True)
    try:
        for thread in [*threads, injector]:
            thread.start()
        for thread in [injector, *threads]:
            thread.join(timeout=max(1, deadline - time.monotonic()))
        stop.set()
        assert not any(t.is_alive() for t in [injector, *threads]), "a client or injector hung"
        assert faults.error is None, faults.error

        failures = [f for attempts in outcomes for f in attempts[:-1]]
        answers: dict[tuple, int] = {}
        for status, _, body in failures:
            answers[(status, body[:40])] = answers.get((status, body[:40]), 0) + 1
        print(
            f"\n[{web}] {len(batches)} batches, {len(sent)} events, {len(failures)} failed "
            f"attempts, answered {answers}, the slowest in "
            f"{max((t for _, t, _ in failures), default=0):.2f} s (slowest request: "
            f"{max(t for a in outcomes for _, t, _ in a):.2f} s); faults: {faults.log}"
        )

        # Then every batch got a 2xx in the end, each failed attempt was a prompt 5xx or a
        # dropped connection (never a hang, never a 4xx)
        for attempts in outcomes:
            assert attempts and 200 <= attempts[-1][0] < 300, attempts
        for status, took, body in failures:
            assert status != "ReadTimeout" and took < 10, (status, took)
            assert isinstance(status, str) or status >= 500, (status, body)
        assert faults.mid_transaction_hits == 5, faults.log
        assert len(failures) >= 3, faults.log

        # When the connections are dropped while no request runs (persistent ones, idle)
        faults.idle_connections_drop()
        # Then the next requests reconnect and succeed at once; and every batch sent again
        # (a client that lost the answer) is all duplicates
        for events in batches:
            response = api.post("/usage", {"events": events})
            assert response.status_code == 200, response.text
            assert response.json() == {"accepted": 0, "duplicates": 50, "rejected": []}

        # and the ledger holds each event once, the counters their sum
        stored = dict(
            UsageEvent.objects.filter(customer=storage.customer).values_list("event_id", "quantity")
        )
        assert len(stored) == UsageEvent.objects.filter(customer=storage.customer).count()
        assert stored == sent
        total = sum(sent.values())
        counter = UsageCounter.objects.get(
            customer=storage.customer, feature=storage.feature, window="billing_period"
        )
        assert counter.used == total
        entitlement = api.get(f"/customers/{customer}/entitlements/{feature}").json()
        assert Decimal(entitlement["usage"]) == total
    finally:
        stop.set()
        for thread in [injector, *threads]:
            thread.join(timeout=20)
        faults.close()


def test_a_request_whose_database_connection_drops_answers_a_retryable_error_json(
    live_server, api_key
):
    # Given a batch request inside its transaction, waiting for the counters it must lock
    storage = storage_given(notify_at=())
    api = Api(live_server.url, api_key)
    event = {"customer": storage.customer.external_id, "feature": storage.feature.key}
    assert api.post("/usage", {"events": [{**event, "event_id": "e0", "quantity": "1"}]}).ok
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        test_pid = cursor.fetchone()[0]
    faults = Faults(customer_id=storage.customer.pk, spare_pids={test_pid}, hits=1, seconds=5)
    locked = threading.Event()
    injector = threading.Thread(target=faults.mid_transaction, args=(locked,), daemon=True)
    try:
        injector.start()
        assert locked.wait(5)

        # When its database connection is dropped
        response = api.post("/usage", {"events": [{**event, "event_id": "e1", "quantity": "1"}]})
        injector.join(timeout=5)
        assert faults.mid_transaction_hits == 1, faults.log

        # Then it answers 503 in the error JSON, telling the client to retry
        assert response.status_code == 503, (response.status_code, response.text[:200])
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"]["code"]
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        injector.join(timeout=5)
        faults.close()
