"""What every API view shares: API-key authentication, the error format, JSON helpers."""

import datetime as dt
import logging
import time
from decimal import Decimal

import orjson
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError, InterfaceError, OperationalError, connection
from django.db.models import ProtectedError
from django.http import Http404, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from djmoney.money import Money
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from . import bounds, key_changes, shared_redis
from .errors import DomainError, Forbidden, RateLimited
from .models import ApiKey, ApiScope, api_key_hash

LAST_USED_EVERY = dt.timedelta(minutes=1)
logger = logging.getLogger(__name__)


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


class FastJSONRenderer(JSONRenderer):
    """orjson: Decimals are pre-formatted as strings by our serializers."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        return orjson.dumps(data, default=_json_default)


def _json_default(value):
    if isinstance(value, Decimal):
        return decimal_str(value)
    return str(value)


def decimal_str(value: Decimal | None) -> str | None:
    """Decimals as JSON strings without trailing zeros: "100", "87.5"."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def time_str(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def money_json(money) -> dict | None:
    if money is None:
        return None
    return {"amount": format(money.amount, "f"), "currency": str(money.currency)}


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(status_code: int, code: str, message: str, details=None) -> Response:
    return Response(error_body(code, message, details), status=status_code)


_DRF_CODES = {
    exceptions.NotAuthenticated: ("unauthenticated", 401),
    exceptions.AuthenticationFailed: ("unauthenticated", 401),
    exceptions.PermissionDenied: ("forbidden", 403),
    exceptions.NotFound: ("not_found", 404),
    exceptions.MethodNotAllowed: ("method_not_allowed", 405),
    exceptions.NotAcceptable: ("not_acceptable", 406),
    exceptions.UnsupportedMediaType: ("unsupported_media_type", 415),
    exceptions.Throttled: ("throttled", 429),
    exceptions.ParseError: ("parse_error", 400),
    exceptions.ValidationError: ("invalid", 400),
}


def _flatten(detail):
    if isinstance(detail, dict):
        return {str(k): _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        flat = [_flatten(v) for v in detail]
        return flat
    return str(detail)


def api_error(exc) -> tuple[int, dict, dict] | None:
    """(status, error body, headers) for the exceptions that are not DRF's: domain errors, and
    the database failing or refusing a value. Shared by DRF's handler and the lean views."""
    if isinstance(exc, DomainError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}
        return exc.status, error_body(exc.code, exc.message, exc.details), headers
    if isinstance(exc, DjangoValidationError):
        details = exc.message_dict if hasattr(exc, "error_dict") else {"non_field": exc.messages}
        message = "; ".join(f"{k}: {' '.join(v)}" for k, v in details.items())
        return 400, error_body("invalid", message or "Invalid input.", details), {}
    if isinstance(exc, Http404):
        return 404, error_body("not_found", str(exc) or "Not found."), {}
    if isinstance(exc, DjangoPermissionDenied):
        return 403, error_body("forbidden", str(exc) or "Not allowed."), {}
    if isinstance(exc, ProtectedError):
        return 409, error_body("in_use", "It is in use and cannot be deleted."), {}
    if isinstance(exc, OperationalError | InterfaceError):
        # The database went away mid-request (a restart, a dropped connection): nothing was
        # recorded, so the client may retry with the same event ids.
        logger.warning("API request failed on the database", exc_info=exc)
        body = error_body("unavailable", "The service is briefly unavailable; retry the request.")
        return 503, body, {"Retry-After": "1"}
    if isinstance(exc, DataError):
        # Input the database cannot hold (a NUL byte, a number out of range): the client's.
        return 400, error_body("invalid", "A value is not acceptable (e.g. a NUL byte)."), {}
    if isinstance(exc, IntegrityError):
        return 409, error_body("conflict", "That conflicts with existing data."), {}
    return None


def api_exception_handler(exc, context):
    """Every error in the one format of DESIGN.md; nothing escapes as a 500 for bad input."""
    mapped = api_error(exc)
    if mapped is not None:
        status_code, body, headers = mapped
        response = Response(body, status=status_code)
        for name, value in headers.items():
            response[name] = value
        return response
    for klass, (code, status_code) in _DRF_CODES.items():
        if isinstance(exc, klass):
            if isinstance(exc, exceptions.ValidationError):
                details = _flatten(exc.detail)
                if not isinstance(details, dict):
                    details = {"non_field": details}
                message = "Invalid input: " + ", ".join(sorted(details)) + "."
            else:
                details = {}
                message = str(exc.detail)
            response = error_response(status_code, code, message, details)
            if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
                response["Retry-After"] = str(int(exc.wait) + 1)
            if status_code == 401:
                response["WWW-Authenticate"] = 'Bearer realm="api"'
            return response
    return None


@csrf_exempt
def api_not_found(request, *args, **kwargs):
    """Unknown paths under /api/ answer in the error format, not Django's HTML page, whatever
    the method: exempt from CSRF, whose HTML 403 would otherwise answer a POST first (there is
    no session here to protect; API calls authenticate with a key)."""
    return JsonResponse(
        error_body("not_found", "No such API endpoint."), status=status.HTTP_404_NOT_FOUND
    )


MONEY_SCHEMA = {
    "type": "object",
    "properties": {
        "amount": {"type": "string", "example": "50.00"},
        "currency": {"type": "string", "example": "USD"},
    },
    "required": ["amount", "currency"],
}


@extend_schema_field(MONEY_SCHEMA)
class MoneyJSONField(serializers.Field):
    """Money as `{"amount": "50.00", "currency": "USD"}`; the amount within bounds.DECIMAL_RULE
    and the column's own size (`max_digits`, `decimal_places`)."""

    default_error_messages = {
        "invalid": 'Money is {{"amount": "<decimal>", "currency": "<ISO code>"}}.',
        "amount": "The amount {problem}.",
        "currency": "Unsupported currency {currency}; use one of {choices}.",
    }

    def __init__(self, *, max_digits: int = 12, decimal_places: int = 2, **kwargs):
        self.max_digits, self.decimal_places = max_digits, decimal_places
        super().__init__(**kwargs)

    def to_representation(self, value):
        return money_json(value)

    def to_internal_value(self, data):
        if not isinstance(data, dict) or set(data) - {"amount", "currency"}:
            self.fail("invalid")
        try:
            amount = bounds.decimal_parse(data.get("amount"))
        except bounds.Refused as refused:
            self.fail("amount", problem=refused)
        if amount >= bounds.decimal_ceiling(self.max_digits, self.decimal_places) or (
            -amount.normalize().as_tuple().exponent > self.decimal_places
        ):
            problem = (
                f"must be below {bounds.decimal_ceiling(self.max_digits, self.decimal_places)}"
                f" with at most {self.decimal_places} decimal places"
            )
            self.fail("amount", problem=problem)
        currency = data.get("currency") or settings.DEFAULT_CURRENCY
        if not isinstance(currency, str) or currency.upper() not in settings.CURRENCIES:
            self.fail("currency", currency=currency, choices=", ".join(settings.CURRENCIES))
        return Money(amount, currency.upper())


@extend_schema_field(
    {
        "type": "string",
        "pattern": r"^[0-9]{1,15}(\.[0-9]{1,4})?$",
        "example": "2.5",
        "description": bounds.DECIMAL_RULE[0].upper() + bounds.DECIMAL_RULE[1:] + ".",
    }
)
class DecimalStringField(serializers.Field):
    """A decimal written as a JSON string within bounds.DECIMAL_RULE, never negative (`positive`:
    never zero either); answered as a string without trailing zeros."""

    default_error_messages = {"invalid": "This value {problem}."}

    def __init__(self, *, positive: bool = False, **kwargs):
        self.positive = positive
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return bounds.decimal_parse(data, positive=self.positive)
        except bounds.Refused as refused:
            self.fail("invalid", problem=refused)

    def to_representation(self, value):
        return decimal_str(value)


class InstantField(serializers.DateTimeField):
    """An ISO 8601 date and time within bounds.INSTANT_RULE (what the periods represent);
    `future`: also still to come (bounds.future_check)."""

    def __init__(self, *, future: bool = False, **kwargs):
        self.future = future
        super().__init__(**kwargs)

    def to_internal_value(self, value):
        instant = super().to_internal_value(value)
        try:
            bounds.instant_check(instant)
        except bounds.Refused as refused:
            raise serializers.ValidationError(f"The date and time {refused}.") from None
        try:
            return bounds.future_check(self.field_name, instant) if self.future else instant
        except bounds.Refused as refused:
            raise serializers.ValidationError(str(refused)) from None


class UrlSafeIdField(serializers.CharField):
    """An id or key that appears in URLs: bounds.URL_SAFE_RULE."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 255)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            return bounds.url_safe_check(value)
        except bounds.Refused as refused:
            raise serializers.ValidationError(f"This id {refused}.") from None


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "entitlements_site.api.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `python manage.py create_api_key NAME` or the admin.",
        }
