"""A revoked (or narrowed) API key stops working at once in every web process.

Each process caches the keys it has seen (api.api_key_lookup), so that a check spends no query
on authentication. Every change to a key announces itself, and each process drops its cached
keys as soon as it hears of one:
- PostgreSQL: NOTIFY in the change's own transaction (delivered at commit); each process keeps
  one listening connection on a thread of its own. The cache is used only while that listener
  is connected: before it has started or after its connection dropped, every request reads its
  key from the database instead.
- SQLite (the embedded default: one machine): the change touches a file next to the database
  after it commits, and each request compares that file's time with the one it last saw (a
  `stat`, no query).
"""

import logging
import os
import threading

from django.db import connection, connections, transaction

logger = logging.getLogger(__name__)
CHANNEL = "entitlements_api_keys"
RECONNECT_SECONDS = 1.0
HEARTBEAT_SECONDS = 1.0

_listening = threading.Event()  # set while a listener is connected in this process
_started_in: int | None = None  # the pid whose thread runs (a forked worker starts its own)
_start_lock = threading.Lock()
_stop = threading.Event()
_thread: threading.Thread | None = None
_forget_callbacks: list = []


def on_change(callback) -> None:
    """`callback()` runs (on the listener's thread) whenever any key changed anywhere."""
    if callback not in _forget_callbacks:
        _forget_callbacks.append(callback)


def cache_usable() -> bool:
    """True while this process hears of every key change: its cached keys may be used."""
    if connection.vendor == "sqlite":
        _marker_compare()
        return True
    if connection.vendor != "postgresql":
        return False
    _listener_ensure()
    return _listening.is_set()


_marker_seen: int | None = None


def _marker_path() -> str | None:
    if connection.is_in_memory_db():
        return None  # one process's own database: its changes are heard in-process
    return f"{connection.settings_dict['NAME']}.keys-changed"


def _marker_compare() -> None:
    global _marker_seen
    path = _marker_path()
    if path is None:
        return
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = 0
    if stamp != _marker_seen:
        if _marker_seen is not None:
            _changed()
        _marker_seen = stamp


def _marker_touch() -> None:
    path = _marker_path()
    if path is not None:
        with open(path, "a"):
            os.utime(path)


def wait_listening(timeout: float = 5.0) -> bool:
    """Starts the listener if needed and waits until it listens (tests; None on SQLite)."""
    if connection.vendor != "postgresql":
        return False
    _listener_ensure()
    return _listening.wait(timeout)


def key_changed_announce() -> None:
    """Tells every process that a key changed; sent when the caller's transaction commits."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    elif connection.vendor == "sqlite":
        transaction.on_commit(_marker_touch)
    _changed()  # this process at once


def _changed() -> None:
    for callback in _forget_callbacks:
        callback()


def listener_stop() -> None:
    """Stops this process's listener and closes its connection (the test suite, before it
    drops its database)."""
    global _started_in
    _stop.set()
    if _thread is not None:
        _thread.join(timeout=5)
    _started_in = None
    _listening.clear()
    _stop.clear()


def _listener_ensure() -> None:
    global _started_in, _thread
    pid = os.getpid()
    if _started_in == pid:
        return
    with _start_lock:
        if _started_in == pid:
            return
        _listening.clear()
        _thread = threading.Thread(target=_listen, name="api-key-changes", daemon=True)
        _thread.start()
        _started_in = pid


def _listen() -> None:
    import psycopg

    params = connections["default"].get_connection_params()
    while not _stop.is_set():
        try:
            with psycopg.connect(**params, autocommit=True) as listener:
                listener.execute(f"LISTEN {CHANNEL}")
                _changed()  # whatever changed while nobody listened
                _listening.set()
                while not _stop.is_set():
                    for _ in listener.notifies(timeout=HEARTBEAT_SECONDS):
                        _changed()
                    listener.execute("SELECT 1")  # a dead connection fails here, not silently
        except Exception:  # noqa: BLE001 (any failure: stop trusting the cache, then retry)
            logger.warning("API key change listener lost its connection", exc_info=True)
        _listening.clear()
        _changed()
        _stop.wait(RECONNECT_SECONDS)
