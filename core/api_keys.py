"""API-key authentication for every API view (DRF and the lean hot path): lookup with a
per-process cache, scope check, rate counting."""

import datetime as dt
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.throttling import SimpleRateThrottle

from . import key_changes, shared_redis
from .errors import Forbidden, RateLimited
from .models import ApiKey, ApiScope, api_key_hash

LAST_USED_EVERY = dt.timedelta(minutes=1)


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer <key>`, looked up by its hash. Keys are cached in the process for
    KEY_CACHE_SECONDS (a revocation reaches every process within that time, this one at once),
    and `last_used_at` is written at most once a minute per key and process: the hot path
    usually spends no query on authentication."""

    keyword = "bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        return (None, api_key_authenticate(header))

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


def api_key_authenticate(header: str) -> ApiKey:
    """The valid API key of an `Authorization` header. Raises AuthenticationFailed (or
    NotAuthenticated for an empty header); shared by DRF and the lean hot-path views."""
    if not header:
        raise exceptions.NotAuthenticated()
    scheme, _, key = header.partition(" ")
    if scheme.lower() != ApiKeyAuthentication.keyword or not key.strip():
        raise exceptions.AuthenticationFailed("Use the header 'Authorization: Bearer <key>'.")
    api_key = api_key_lookup(key.strip())
    if api_key is None:
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if api_key.revoked_at is not None:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    _last_used_touch(api_key)
    return api_key


# A bound only: every change to a key is heard at once (key_changes), and then the cache is
# dropped; without a listener (SQLite, a lost connection) keys are read on every request.
KEY_CACHE_SECONDS = 60.0
_keys: dict[str, tuple[float, ApiKey | None, int]] = {}
_keys_generation = 0  # grows with every change heard: a lookup begun before it is not cached
_last_used_written: dict[int, float] = {}


def _keys_changed() -> None:
    global _keys_generation
    _keys_generation += 1
    _keys.clear()


key_changes.on_change(_keys_changed)


def api_key_lookup(key: str) -> ApiKey | None:
    digest = api_key_hash(key)
    now = time.monotonic()
    cacheable = key_changes.cache_usable()
    if cacheable:
        cached = _keys.get(digest)
        if (
            cached is not None
            and now - cached[0] < KEY_CACHE_SECONDS
            and cached[2] == _keys_generation
        ):
            return cached[1]
    generation = _keys_generation
    try:
        api_key = ApiKey.objects.filter(key_hash=digest).first()
    except (OperationalError, InterfaceError):
        # A persistent connection that died while idle fails its first statement: this read
        # is safe to make again on a new connection (outside a transaction only).
        if connection.in_atomic_block:
            raise
        connection.close()
        api_key = ApiKey.objects.filter(key_hash=digest).first()
    if cacheable and generation == _keys_generation:
        if len(_keys) > 10_000:
            _keys.clear()
        _keys[digest] = (now, api_key, generation)
    return api_key


def api_keys_forget() -> None:
    """Drops this process's cached keys and Redis state (tests)."""
    _keys_changed()
    _last_used_written.clear()
    shared_redis.forget()


def _last_used_touch(api_key: ApiKey) -> None:
    now = time.monotonic()
    if now - _last_used_written.get(api_key.pk, -LAST_USED_EVERY.total_seconds()) < (
        LAST_USED_EVERY.total_seconds()
    ):
        return
    _last_used_written[api_key.pk] = now
    stamp = timezone.now()
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=stamp)
    api_key.last_used_at = stamp


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def api_key_scope_check(api_key: ApiKey, *, method: str, runtime: bool) -> None:
    """Raises Forbidden (`insufficient_scope`) when `api_key` may not make this call: a runtime
    key only the runtime endpoints (`runtime`), a read key only GETs (DESIGN.md "HTTP API")."""
    scope = api_key.scope
    if (
        scope == ApiScope.MANAGEMENT
        or (scope == ApiScope.RUNTIME and runtime)
        or (scope == ApiScope.READ and method in READ_METHODS)
    ):
        return
    needed = "a runtime or management" if runtime else "a management"
    if not runtime and method in READ_METHODS:
        needed = "a read or management"
    raise Forbidden(
        f"This {scope} key may not make this call; it needs {needed} key.",
        code="insufficient_scope",
        details={"scope": scope},
    )


class HasApiKey(BasePermission):
    """A valid key whose scope allows the call. Views of the runtime endpoints set
    `runtime_endpoint = True`."""

    def has_permission(self, request, view):
        if not isinstance(request.auth, ApiKey):
            return False
        api_key_scope_check(
            request.auth,
            method=request.method,
            runtime=getattr(view, "runtime_endpoint", False),
        )
        return True


class ApiKeyRateThrottle(SimpleRateThrottle):
    """Requests per API key in fixed windows, counted in the shared cache (CACHE_URL in
    production) with one atomic increment per request. Counting is best effort: when the
    cache is down the API keeps answering, unthrottled, rather than failing the checks."""

    scope = "api_key"

    def allow_request(self, request, view):
        if self.rate is None or not isinstance(request.auth, ApiKey):
            return True  # requests without a valid key are refused by authentication
        self.wait_seconds = api_key_throttle_wait(request.auth, self.rate)
        return self.wait_seconds is None

    def wait(self):
        return getattr(self, "wait_seconds", None)


throttle_clock = time.time  # the windows' clock (tests freeze it)


def api_key_rate(api_key: ApiKey, rate: str | None = None) -> shared_redis.RateCount:
    """This request's place in the key's fixed window: what to count, against what limit."""
    rate = rate or settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["api_key"]
    num_requests, duration = SimpleRateThrottle.parse_rate(None, rate)
    now = throttle_clock()
    window = int(now // duration)
    return shared_redis.RateCount(
        key=f"throttle:apikey:{api_key.pk}:{window}",
        ttl=duration + 1,
        limit=num_requests,
        retry_after=int((window + 1) * duration - now) + 1,
    )


def api_key_throttle_wait(api_key: ApiKey, rate: str | None = None) -> float | None:
    """Counts one request of `api_key` now; answers the seconds to wait when the key is over
    its rate, else None. Fails open when the cache is unavailable."""
    shared_redis.rate_defer(api_key_rate(api_key, rate))
    try:
        shared_redis.rate_settle()
    except RateLimited as limited:
        return limited.retry_after - 1
    return None


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "core.api_keys.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `python manage.py create_api_key NAME` or the admin.",
        }
