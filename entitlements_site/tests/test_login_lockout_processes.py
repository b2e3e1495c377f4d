"""Two web processes agree on a login lockout: the failures are counted in the database, not
in a process (issue 23: with per-process counters, 2 workers let 17 attempts through)."""

import os
import re
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, Request, build_opener

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
PORTS = range(8700, 8800)


def _shared_database_url(tmp_path: Path) -> str:
    """A database URL the server processes share with this test's database."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        # The test database lives in this process's memory: a copy in a file, taken after the
        # test's rows were committed, is what both servers open.
        path = tmp_path / "db.sqlite3"
        with connection.cursor() as cursor:
            cursor.execute("VACUUM INTO %s", [str(path)])
        return f"sqlite:///{path}"
    return (
        f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:"
        f"{settings['PORT'] or 5432}/{settings['NAME']}"
    )


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for a test server")


def _start_server(stack: ExitStack, database_url: str) -> str:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SECRET_KEY": "test-only-key-for-a-subprocess",
        "CELERY_BROKER_URL": "",
    }
    # No shared cache: whatever the processes agree on, they agree on through the database.
    for name in ("DATABASE_TEST_NAME", "CACHE_URL", "DJANGO_TRUSTED_PROXIES"):
        env.pop(name, None)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "entitlements_site.wsgi:application",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-level", "warning"],
        cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def stop():
        server.terminate()
        server.wait(timeout=10)

    stack.callback(stop)
    return f"http://127.0.0.1:{port}"


def _wait_until_up(base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with build_opener().open(f"{base}/healthz", timeout=5):
                return
        except OSError:
            assert time.monotonic() < deadline, f"{base} did not start"
            time.sleep(0.2)


def _sign_in(base: str, username: str, password: str) -> tuple[int, str]:
    """What a browser does: open the login page (CSRF cookie and token), post the form."""
    opener = build_opener(HTTPCookieProcessor(CookieJar()))
    with opener.open(f"{base}/accounts/login/", timeout=10) as page:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.read().decode())[1]
    form = {"username": username, "password": password, "csrfmiddlewaretoken": token}
    request = Request(f"{base}/accounts/login/", data=urlencode(form).encode())
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.django_db(transaction=True)
def test_two_web_processes_agree_on_a_lockout(tmp_path):
    # Given support's account (a password quick to check: one PBKDF2 round) and two web
    # processes on one database, each with its own memory and no shared cache
    get_user_model().objects.create(
        username="support",
        password=PBKDF2PasswordHasher().encode(PASSWORD, "testsalt", iterations=1),
    )
    database_url = _shared_database_url(tmp_path)
    with ExitStack() as stack:
        servers = [_start_server(stack, database_url) for _ in range(2)]
        for base in servers:
            _wait_until_up(base)

        # When ten failed sign-ins from one address are spread over both (five each)
        for n in range(10):
            status, page = _sign_in(servers[n % 2], "support", "wrong password")
            assert status == 200
            assert "Please enter a correct username and password" in page

        # Then the eleventh is refused by either process, even with the right password
        for base in servers:
            status, page = _sign_in(base, "support", PASSWORD)
            assert status == 429
            assert "Too many failed sign-in attempts. Try again in 15 minutes." in page
