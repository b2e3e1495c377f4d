"""The quick start's server (`make run`): gunicorn with our config (entitlements_site/
gunicorn_conf.py), DEBUG off, a secret key from the local key file, SITE_URL on its PORT.

Each case starts real processes with the environment `make run` gives them, on a free port:
settings are read from the environment at import, so they cannot be changed in this one."""

import collections
import contextlib
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

CONF = Path(settings.BASE_DIR) / "entitlements_site" / "gunicorn_conf.py"
GUNICORN = Path(sys.executable).with_name("gunicorn")
CLIENTS = 100
REQUESTS_PER_CLIENT = 2
# What the quick start must not inherit from the environment the tests run in.
NOT_INHERITED = (
    "DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY_FILE", "DB_CONN_MAX_AGE", "SITE_URL",
    "PORT", "EMAIL_URL", "CELERY_BROKER_URL", "CACHE_URL", "HOT_REDIS_URL", "GUNICORN_CMD_ARGS",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def conf_value(name: str):
    """A setting of our gunicorn config, read without keeping the environment it sets."""
    saved = dict(os.environ)
    try:
        return runpy.run_path(str(CONF))[name]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def quickstart_env(tmp_path: Path, *, database_url: str, **extra: str) -> dict[str, str]:
    """What `make run` gives gunicorn: DEBUG off, PORT, the key file it generated once."""
    key_file = tmp_path / "secret_key"
    if not key_file.exists():
        key_file.write_text(os.urandom(32).hex())
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY_FILE=str(key_file),
        DATABASE_URL=database_url,
        EMAIL_FILE_PATH=str(tmp_path / "outbox"),
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="WARNING",
    )
    return env | extra


class QuickstartServer:
    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.port = free_port()
        self.log_path = tmp_path / "gunicorn.log"
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen(
            [str(GUNICORN), "-c", str(CONF)],
            cwd=settings.BASE_DIR,
            env=env | {"PORT": str(self.port)},
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited: {self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                if get(self.port, "/healthz") == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"gunicorn did not answer: {self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only what it started
        self.process.wait()
        self.log_file.close()

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text()


@contextlib.contextmanager
def quickstart_server(tmp_path: Path, env: dict[str, str]):
    server = QuickstartServer(tmp_path, env)
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


def get(port: int, path: str) -> int:
    """One request on a connection of its own, as a new client would open it."""
    client = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        client.request("GET", path)
        response = client.getresponse()
        response.read()
        return response.status
    finally:
        client.close()


def burst(port: int, path: str) -> collections.Counter:
    """CLIENTS clients released at once, each sending REQUESTS_PER_CLIENT requests; counts
    statuses, and errors (a reset, a refused connection) by name."""
    outcomes: collections.Counter = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client():
        start.wait()
        for _ in range(REQUESTS_PER_CLIENT):
            try:
                outcome = get(port, path)
            except OSError as error:
                outcome = type(error).__name__
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_the_quick_start_answers_a_hundred_concurrent_clients_on_sqlite(tmp_path):
    # Given the quick-start server on a SQLite file of its own
    env = quickstart_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'quickstart.sqlite3'}")
    with quickstart_server(tmp_path, env) as server:
        # When 100 clients at once ask for readiness (a database round trip each)
        outcomes = burst(server.port, "/readyz")

    # Then every request is answered 200: none reset, refused or 503
    assert outcomes == {200: CLIENTS * REQUESTS_PER_CLIENT}, outcomes


@pytest.mark.django_db
def test_the_quick_start_on_postgresql_bounds_its_connections_and_releases_them(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's connection count is checked on PostgreSQL (CI).")
    import psycopg

    # Given the quick-start server on the test database, its connections named for counting
    db = connection.settings_dict
    conninfo = psycopg.conninfo.make_conninfo(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"],
        password=db["PASSWORD"] or None, dbname=db["NAME"],
    )  # fmt: skip
    name = f"quickstart-{os.getpid()}"
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = quickstart_env(
        tmp_path, database_url=f"{url}?application_name={name}", PGPASSWORD=db["PASSWORD"] or ""
    )
    counts: list[int] = []
    sampling = threading.Event()

    with psycopg.connect(conninfo, autocommit=True) as watcher:

        def held() -> int:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]
            ).fetchone()
            return row[0]

        def sample():
            while not sampling.is_set():
                counts.append(held())
                time.sleep(0.02)

        with quickstart_server(tmp_path, env) as server:
            idle = held()
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                # When 100 clients at once ask for readiness (a database round trip each)
                outcomes = burst(server.port, "/readyz")
            finally:
                sampling.set()
                sampler.join()
            deadline = time.monotonic() + 10
            while held() > idle and time.monotonic() < deadline:
                time.sleep(0.1)
            after = held()

    # Then all are answered, the server never held more connections than it has threads,
    # and once answered it holds no more than before the burst
    assert outcomes == {200: CLIENTS * REQUESTS_PER_CLIENT}, outcomes
    assert max(counts) <= conf_value("workers") * conf_value("threads")
    assert max(counts) > idle, "the burst was seen by the sampler"
    assert after <= idle == 0


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


SETUP = "import django; django.setup(); from django.conf import settings; print(settings.SITE_URL)"


def test_debug_off_without_a_secret_key_refuses_to_start(tmp_path):
    # Given DEBUG off and no key: none in the environment, no key file
    env = quickstart_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    env["DJANGO_SECRET_KEY_FILE"] = str(tmp_path / "no-such-key")

    # When Django starts, and when the quick-start server starts
    django_start = run_python(SETUP, env)
    server = subprocess.run(
        [str(GUNICORN), "-c", str(CONF)],
        cwd=settings.BASE_DIR,
        env=env | {"PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then both stop with the reason, before answering anything
    assert django_start.returncode != 0
    assert "no secret key is configured: set DJANGO_SECRET_KEY" in django_start.stderr
    log = server.stdout + server.stderr
    assert server.returncode != 0
    assert "Refusing to start: DJANGO_DEBUG is off and no secret key" in log
    assert "Listening at" not in log and "Booting worker" not in log


def test_debug_off_refuses_the_development_key_from_the_repository(tmp_path):
    env = quickstart_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    env["DJANGO_SECRET_KEY"] = settings.DEVELOPMENT_SECRET_KEY

    result = run_python(SETUP, env)

    assert result.returncode != 0
    assert "The development key is refused" in result.stderr


def test_the_key_file_signs_when_no_key_is_in_the_environment(tmp_path):
    # Given DEBUG off and the key file `make run` wrote
    env = quickstart_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")

    # When Django starts
    result = run_python(SETUP.replace("settings.SITE_URL", "settings.SECRET_KEY"), env)

    # Then it signs with that file's key
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (tmp_path / "secret_key").read_text()


def test_site_url_follows_port_and_an_explicit_site_url_wins(tmp_path):
    env = quickstart_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")

    on_port = run_python(SETUP, env | {"PORT": "8123"})
    explicit = run_python(SETUP, env | {"PORT": "8123", "SITE_URL": "https://ent.example.com"})

    assert on_port.stdout.strip() == "http://127.0.0.1:8123", on_port.stderr
    assert explicit.stdout.strip() == "https://ent.example.com", explicit.stderr
