"""The lean path of the hot endpoints (check, check all, consume and batch usage).

They sit in the request path of our users' own products, so they skip what only the pages
need: Django REST framework's request wrapping and negotiation, Django's URL resolving, and
the page middleware (sessions, messages, CSRF, CSP, htmx, history). `HotPathMiddleware` stands
right after SecurityMiddleware; for one of these paths it authenticates the API key, counts the
rate limit, parses the JSON body and calls the same answer function as the DRF view. The
routes come from the API's own URL table: a DRF view declares its lean answer with
`lean = Lean(method, answer)`, and the middleware compiles the paths of those views once
(the views stay to document the endpoints and to serve them if this is switched off with
`API_LEAN_VIEWS=false`). The contract is the same: the error JSON, 401, 415, 429.
"""

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.http import HttpResponse
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.converters import StringConverter
from rest_framework import exceptions

from . import shared_redis
from .api import _json_default, api_error, error_body
from .api_keys import api_key_authenticate, api_key_rate, api_key_scope_check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lean:
    """A DRF view's lean answer: `answer(*path_values)`, or `answer(*path_values, body)` for a
    method that takes a JSON body (POST). It answers the body of a 200, or `WithStatus`."""

    method: str
    answer: Callable

    @property
    def with_body(self) -> bool:
        return self.method == "POST"


@dataclass(frozen=True)
class WithStatus:
    """An answer whose status is not 200 (a reservation made: 201)."""

    status: int
    body: dict


_SPECIAL = re.compile(r"[\\(\[.?*+^$]")


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern
    answer: Callable
    with_body: bool


def lean_routes(patterns, prefix: str = "^/") -> list[_Route]:
    """The routes of every view in the URL table that declares `lean`, in table order."""
    routes = []
    for entry in patterns:
        regex = prefix + entry.pattern.regex.pattern.removeprefix("^")
        converters = getattr(entry.pattern, "converters", {})
        if any(not isinstance(c, StringConverter) for c in converters.values()):
            continue  # path values are passed on as strings, unconverted
        if isinstance(entry, URLResolver):
            routes += lean_routes(entry.url_patterns, regex)
        elif isinstance(entry, URLPattern):
            lean = getattr(getattr(entry.callback, "cls", None), "lean", None)
            if isinstance(lean, Lean):
                routes.append(_Route(lean.method, re.compile(regex), lean.answer, lean.with_body))
    return routes


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
    content = orjson.dumps(body, default=_json_default)
    response = HttpResponse(content, content_type="application/json", status=status)
    # As CommonMiddleware (skipped) would: without it the server sends the body chunked, in
    # one more write (a system call, and the GIL handed over) per answer.
    response["Content-Length"] = str(len(content))
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
        if isinstance(answer, WithStatus):
            return _json_response(answer.status, answer.body)
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
        self.enabled = settings.API_LEAN_VIEWS
        self._resolver = None
        self._routes: list[_Route] = []
        self._prefix = ""

    def _routes_of(self, resolver) -> list[_Route]:
        # Compiled once per URL configuration (tests may swap it).
        if resolver is not self._resolver:
            self._routes = lean_routes(resolver.url_patterns)
            # The literal start the paths share ("/api/v1/"): other paths skip the loop.
            literal = [_SPECIAL.split(r.pattern.pattern[1:], maxsplit=1)[0] for r in self._routes]
            self._prefix = os.path.commonprefix(literal)
            self._resolver = resolver
        return self._routes

    def lean_route(self, method: str, path: str) -> tuple[_Route, list] | None:
        """The lean route of a request and its path values, or None: Django serves it."""
        if self.enabled:
            routes = self._routes_of(get_resolver())
            if routes and path.startswith(self._prefix):
                for route in routes:
                    if method == route.method:
                        match = route.pattern.match(path)
                        if match:
                            return route, list(match.groups())
        return None

    def __call__(self, request):
        found = self.lean_route(request.method, request.path_info)
        if found is None:
            return self.get_response(request)
        return lean_answer(request, found)


def lean_answer(request, found: tuple[_Route, list]) -> HttpResponse:
    """The answer of a request on a lean route (`HotPathMiddleware.lean_route`)."""
    route, values = found
    return _answer(request, route.answer, values, route.with_body)
