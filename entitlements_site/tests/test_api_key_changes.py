"""A revoked key is refused on its next request in every process (key_changes.py), while
processes still cache the keys they have seen."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from django.db import connection

from core import api_keys, key_changes
from core.models import ApiKey
from core.services import api_key_create, api_key_revoke

ROOT = Path(__file__).resolve().parents[2]


def test_a_key_is_cached_until_another_process_announces_a_change(db, tmp_path, monkeypatch):
    # Given a SQLite database file shared by several processes (the marker beside it)
    if connection.vendor != "sqlite":
        pytest.skip("the file marker is SQLite's way; PostgreSQL's is tested across processes")
    marker = tmp_path / "db.sqlite3.keys-changed"
    monkeypatch.setattr(key_changes, "_marker_path", lambda: str(marker))
    _, key = api_key_create(name="app")
    assert api_keys.api_key_lookup(key) is not None
    ApiKey.objects.update(revoked_at="2026-01-01T00:00:00Z")  # behind this process's back

    # While nothing was announced, this process still answers from its cache
    assert api_keys.api_key_lookup(key).revoked_at is None

    # When another process announces a change (it touches the marker after its commit)
    time.sleep(0.01)
    marker.touch()

    # Then the very next lookup reads the key again, revoked
    assert api_keys.api_key_lookup(key).revoked_at is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, key: str) -> int:
    request = Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urlopen(request, timeout=5) as response:
            return response.status
    except HTTPError as error:
        return error.code


@pytest.mark.django_db(transaction=True)
def test_a_revoked_key_is_refused_at_once_by_another_web_process():
    if connection.vendor != "postgresql":
        pytest.skip("two web processes share a database server on PostgreSQL (CI)")
    # Given a gunicorn web process on the test database, which has served (and cached) a key
    api_key, key = api_key_create(name="app-server", scope="runtime")
    settings = connection.settings_dict
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:"
        f"{settings['PORT'] or 5432}/{settings['NAME']}",
        "DJANGO_SECRET_KEY": "test-only-key-for-a-subprocess",
        "CELERY_BROKER_URL": "",
    }
    env.pop("DATABASE_TEST_NAME", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "entitlements_site.wsgi:application",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/v1/customers/nobody/entitlements"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = _get(url, key)
                break
            except OSError:
                assert time.monotonic() < deadline, "the web process did not start"
                time.sleep(0.2)
        deadline = time.monotonic() + 10
        while _get(url, key) != 404:  # authenticated (no such customer), once it listens
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        time.sleep(1.5)  # long enough for its listener to be connected for sure
        assert _get(url, key) == 404

        # When the key is revoked in this process
        api_key_revoke(api_key=api_key)

        # Then the other process refuses it within the contract's second (the notice usually
        # arrives before the next request; on a loaded machine it may take a few milliseconds)
        revoked_at = time.monotonic()
        while (status := _get(url, key)) != 401 and time.monotonic() - revoked_at < 1.0:
            time.sleep(0.02)
        assert status == 401, f"still accepted {time.monotonic() - revoked_at:.2f} s after revoking"
    finally:
        server.terminate()
        server.wait(timeout=10)
