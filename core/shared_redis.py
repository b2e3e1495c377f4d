"""The web process's one Redis connection for the hot path: the API rate limit and the engine's
usage snapshots (customers/snapshots.py).

Both fail open. After an error every caller skips Redis for RETRY_SECONDS instead of making
each request wait for a dead or hung server, and falls back: the rate limit goes uncounted,
snapshots are read from the database. Listeners registered with `on_failure` hear of each
failure (the snapshots owe Redis an invalidation when it returns).

On a loopback a Redis round trip costs as much as a PostgreSQL one on these machines, so a
check spends exactly one: the rate limit's count is deferred (`rate_defer`) and sent with the
engine's first Redis call of the request (`rate_take`), or on its own (`rate_settle`).
"""

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from .errors import RateLimited

logger = logging.getLogger(__name__)
RETRY_SECONDS = 1.0
TIMEOUT_SECONDS = 0.5

_client = None
_client_url = None
_down_until = 0.0
_listeners: list[Callable[[], None]] = []
_request = threading.local()


def url() -> str:
    return settings.HOT_REDIS_URL or ""


def client():
    """The shared client, or None when no Redis is configured or it failed a moment ago."""
    global _client, _client_url
    location = url()
    if not location or time.monotonic() < _down_until:
        return None
    if _client is None or _client_url != location:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        _client = redis.Redis.from_url(
            location,
            socket_connect_timeout=TIMEOUT_SECONDS,
            socket_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),  # one try: a dead Redis costs one timeout, not four
        )
        _client_url = location
    return _client


def script_run(script, *, keys: list, args: list):
    """`script(keys=keys, args=args)` (a redis-py `Script` of the shared client) with less
    around it: one EVALSHA on this thread's own connection (`_thread_connection`), without
    redis-py's pool, retry, observability and callback layers. A server that does not know
    the script yet (restarted, flushed) gets it the usual way."""
    from redis.exceptions import NoScriptError, ResponseError

    connection = _thread_connection(script.registered_client.connection_pool)
    try:
        connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return connection.read_response()
    except NoScriptError:
        pass  # answered in full: the connection stays usable
    except ResponseError:
        raise
    except BaseException:
        _own.connection = None
        connection.disconnect()  # a reply may be half read: never reused as it is
        raise
    return script(keys=keys, args=args)


# Each thread's connection for `script_run`, outside the client's pool: taking one from the
# pool and giving it back costs a lock, a check of the process id and a poll() of the socket
# per call (whether the server left something unread, which this connection never does: it
# is closed after any error). Its socket blocks, with the timeout kept by the kernel
# (SO_RCVTIMEO, SO_SNDTIMEO) instead of by Python, which polls before every send and every
# receive: a round trip is one send and one receive, where it was five system calls, each
# handing the GIL to another thread and back (docs/performance.md).
_own = threading.local()


def _thread_connection(pool):
    own = getattr(_own, "connection", None)
    if own is not None and own.pool is pool and own.pid == os.getpid():
        return own
    connection = pool.connection_class(**pool.connection_kwargs)
    connection.connect()
    _kernel_timeouts(connection._sock, pool.connection_kwargs.get("socket_timeout"))
    connection.pool, connection.pid = pool, os.getpid()
    _own.connection = connection
    return connection


def _kernel_timeouts(sock, seconds: float | None) -> None:
    """The socket made blocking, its timeout kept by the kernel; as it was if it cannot be."""
    if not seconds:
        return
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    except (OSError, AttributeError):
        return  # Python's timeout stays
    sock.settimeout(None)


def failed(error: BaseException) -> None:
    """Records a failed call: Redis is skipped for RETRY_SECONDS; the listeners hear of it."""
    global _down_until
    logger.warning("Redis unavailable for the hot path: %s", error)
    _down_until = time.monotonic() + RETRY_SECONDS
    for listener in _listeners:
        listener()


def on_failure(listener: Callable[[], None]) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def forget() -> None:
    """Drops the client and the failure state (tests; after settings change)."""
    global _client, _client_url, _down_until
    _client, _client_url, _down_until = None, None, 0.0
    _request.__dict__.clear()


# --- the rate limit's deferred count ------------------------------------------------------


@dataclass
class RateCount:
    key: str
    ttl: int
    limit: int
    retry_after: int
    count: int | None = None  # set once counted


def rate_defer(rate: RateCount) -> None:
    """Counts this request against `rate` with the next Redis call of the request."""
    _request.rate = rate


def rate_take() -> RateCount | None:
    """The pending count, for a Redis call about to be made that will count it (the caller
    then calls `rate_counted`)."""
    rate = getattr(_request, "rate", None)
    return rate if rate is not None and rate.count is None else None


def rate_counted(rate: RateCount, count: int) -> None:
    """Records the count a piggybacked call returned; over the limit raises RateLimited."""
    rate.count = count
    _rate_check(rate)


def rate_settle() -> None:
    """Counts the pending request on its own if no call counted it (or Redis is down: then it
    goes uncounted), and raises RateLimited if it is over the limit. Ends the request's rate."""
    rate = getattr(_request, "rate", None)
    _request.rate = None
    if rate is None:
        return
    if rate.count is None and not url():
        rate.count = _count_in_cache(rate)
    if rate.count is None:
        redis = client()
        if redis is None:
            return
        try:
            count, _ = redis.pipeline(transaction=False).incr(rate.key).expire(
                rate.key, rate.ttl
            ).execute()  # fmt: skip
        except Exception as error:  # noqa: BLE001 (any Redis failure: fail open)
            failed(error)
            return
        rate.count = count
    _rate_check(rate)


def _count_in_cache(rate: RateCount) -> int | None:
    """Without Redis (the embedded defaults): Django's cache, best effort."""
    from django.core.cache import cache

    try:
        try:
            return cache.incr(rate.key)
        except ValueError:  # the window's first request
            return 1 if cache.add(rate.key, 1, rate.ttl) else cache.incr(rate.key)
    except Exception:  # noqa: BLE001 (fail open)
        logger.warning("API rate limit not counted: the cache is unavailable", exc_info=True)
        return None


def rate_discard() -> None:
    _request.rate = None


def _rate_check(rate: RateCount) -> None:
    if rate.count is not None and rate.count > rate.limit:
        raise RateLimited(
            f"Request was throttled. Expected available in {rate.retry_after} seconds.",
            retry_after=rate.retry_after,
        )
