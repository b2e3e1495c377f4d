"""What every API view shares: the error format and JSON helpers."""

import datetime as dt
import functools
import logging
from decimal import Decimal

import orjson
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError, InterfaceError, OperationalError
from django.db.models import ProtectedError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from .errors import DomainError, RateLimited

logger = logging.getLogger(__name__)


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
    return _time_text(value)


@functools.lru_cache(maxsize=4096)
def _time_text(value: dt.datetime) -> str:
    # Cached: the hot answers repeat the same few window boundaries (equal instants in any
    # zone are equal keys, and give the same UTC text).
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
