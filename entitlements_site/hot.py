"""The lean path of the hot endpoints: check, check all, consume and batch usage.

They sit in the request path of our users' own products, so they skip what only the pages
need: Django REST framework's request wrapping and negotiation, URL resolving, and the page
middleware (sessions, messages, CSRF, CSP, htmx, history). `HotPathMiddleware` stands right
after SecurityMiddleware; for one of these paths it authenticates the API key, counts the rate
limit, parses the JSON body and calls the same answer functions as the DRF views (which stay
in the URL configuration to document the endpoints and to serve them if this is switched off
with `API_LEAN_VIEWS=false`). The contract is the same: the error JSON, 401, 415, 429.
"""

import contextlib
import logging
import re

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.http import HttpResponse
from rest_framework import exceptions

from customers import api as customers_api

from . import shared_redis
from .api import (
    _json_default,
    api_error,
    api_key_authenticate,
    api_key_rate,
    api_key_scope_check,
    error_body,
)

logger = logging.getLogger(__name__)
_SEGMENT = r"(?P<%s>[^/]+)"
_CUSTOMER = "^/api/v1/customers/" + _SEGMENT % "external_id"
_FEATURE = _CUSTOMER + "/entitlements/" + _SEGMENT % "feature_key"
ROUTES = (
    ("GET", re.compile(_FEATURE + "$"), customers_api.check_answer, False),
    ("GET", re.compile(_CUSTOMER + "/entitlements$"), customers_api.entitlements_answer, False),
    ("POST", re.compile(_FEATURE + "/consume$"), customers_api.consume_answer, True),
    ("POST", re.compile("^/api/v1/usage$"), customers_api.usage_batch_answer, True),
)


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


_policy_cache: tuple = (None, "")


def _policy() -> str:
    """The site's Content-Security-Policy header, built once per settings object."""
    global _policy_cache
    directives = settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]
    if _policy_cache[0] is not directives:
        text = "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())
        _policy_cache = (directives, text)
    return _policy_cache[1]


def _json_response(status: int, body, headers: dict | None = None) -> HttpResponse:
    response = HttpResponse(
        orjson.dumps(body, default=_json_default), content_type="application/json", status=status
    )
    # The headers the skipped page middleware would have added: the same policy everywhere.
    response["X-Frame-Options"] = "DENY"
    response["Content-Security-Policy"] = _policy()
    response["Cache-Control"] = "no-store"  # customers' usage, as NoStoreMiddleware says
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _authenticate(request):
    try:
        return api_key_authenticate(request.META.get("HTTP_AUTHORIZATION", ""))
    except exceptions.APIException as error:
        raise _Refused(401, "unauthenticated", str(error.detail), {
            "WWW-Authenticate": 'Bearer realm="api"'
        }) from None  # fmt: skip


def _parse_body(request):
    content_type = request.META.get("CONTENT_TYPE", "")
    body = request.body
    if not body:
        return {}
    if content_type.split(";")[0].strip().lower() != "application/json":
        message = f'Unsupported media type "{content_type}" in request.'
        raise _Refused(415, "unsupported_media_type", message)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _Refused(400, "parse_error", f"JSON parse error - {error}") from None


def _answer(request, handler, path_values: list, with_body: bool) -> HttpResponse:
    # No `SELECT 1` health check before the first query (CONN_HEALTH_CHECKS, kept for the
    # pages): a round trip per call. `_answer_reconnecting` does its work instead.
    connection.health_check_done = True
    try:
        request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware would check it
        api_key = _authenticate(request)
        api_key_scope_check(api_key, method=request.method, runtime=True)  # all are runtime
        # Counted with the engine's first Redis call (a check spends one round trip in all),
        # before anything is written; settled at the end whatever happened.
        shared_redis.rate_defer(api_key_rate(api_key))
        try:
            args = [*path_values, _parse_body(request)] if with_body else path_values
            answer, failure = _answer_reconnecting(handler, args), None
        except Exception as error:  # noqa: BLE001 (answered below, after the rate)
            answer, failure = None, error
        shared_redis.rate_settle()  # over the rate: 429, whatever the answer would have been
        if failure is not None:
            raise failure
        return _json_response(200, answer)
    except _Refused as refused:
        return _json_response(
            refused.status, error_body(refused.code, refused.message), refused.headers
        )
    except Exception as error:  # noqa: BLE001 (mapped like DRF's handler, or re-raised)
        shared_redis.rate_discard()
        mapped = api_error(error)
        if mapped is None:
            raise
        return _json_response(*mapped)


def _answer_reconnecting(handler, args: list):
    """Calls the handler; if the persistent connection had died while idle (its very first
    statement fails, nothing done), reconnects and calls it once more. A failure later in the
    request is answered 503 (Retry-After): the client retries, event ids keep it exact."""
    reused = connection.connection is not None
    done = []

    def count(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        done.append(True)
        return result

    try:
        with connection.execute_wrapper(count):
            return handler(*args)
    except (OperationalError, InterfaceError):
        if not reused or done or connection.in_atomic_block:
            raise
    logger.info("The database connection had gone away; reconnecting")
    with contextlib.suppress(Exception):
        connection.close()
    return handler(*args)


class HotPathMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.enabled = getattr(settings, "API_LEAN_VIEWS", True)

    def __call__(self, request):
        if self.enabled and request.path_info.startswith("/api/v1/"):
            method = request.method
            for route_method, pattern, handler, with_body in ROUTES:
                if method == route_method:
                    match = pattern.match(request.path_info)
                    if match:
                        return _answer(request, handler, list(match.groups()), with_body)
        return self.get_response(request)
