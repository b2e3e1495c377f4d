"""Requests carrying text no database can store are refused before any view sees them.

A NUL byte in a path, a query or a submitted form field would reach a lookup (a customer by
external id, a feature by key) that PostgreSQL refuses with an error, while SQLite stores or
compares it: a 500 on one database, a silent miss on the other. Here both answer 400: the
error JSON under /api/, the site's 400 page elsewhere.
"""

from urllib.parse import unquote_to_bytes

from django.core.exceptions import SuspiciousOperation
from django.http import JsonResponse
from django.utils.cache import add_never_cache_headers

from core.api import error_body

_MESSAGE = "The request contains a NUL character, which no field accepts."


def _has_nul(text: str) -> bool:
    return "\x00" in text


class UnstorableInputMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if self._refused(request):
            if request.path_info.startswith("/api/"):
                return JsonResponse(error_body("invalid", _MESSAGE), status=400)
            raise SuspiciousOperation(_MESSAGE)  # the 400 page (handler400)
        return self.get_response(request)

    @staticmethod
    def _refused(request) -> bool:
        if _has_nul(request.path_info):
            return True
        query = request.META.get("QUERY_STRING", "")
        if query and b"\x00" in unquote_to_bytes(query.replace("+", " ")):
            return True
        content_type = request.META.get("CONTENT_TYPE", "")
        if request.method == "POST" and content_type.startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            return any(
                _has_nul(key) or any(_has_nul(v) for v in values)
                for key, values in request.POST.lists()
            )
        return False


class NoStoreMiddleware:
    """Pages of a signed-in person (a customer's usage, invoices, prices, the staff pages) and
    API answers are never kept by a browser's or a proxy's cache: `Cache-Control: no-store`,
    unless the view said otherwise. The lean hot-path answers set it themselves (hot.py)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.has_header("Cache-Control"):
            return response
        user = getattr(request, "user", None)
        if request.path_info.startswith("/api/v1/") or (user and user.is_authenticated):
            add_never_cache_headers(response)
        return response
