"""The lean hot path served ahead of Django's WSGI handler (entitlements_site/wsgi.py).

A request on one of core.hot's lean routes (check, check all, consume, batch usage, the
reservations) already skips everything of Django's past the third middleware. What it still
paid in Django's handler is bookkeeping its answer never uses: the `request_started` and
`request_finished` signals sent through the dispatcher (their receivers looked up on each
request), the URL configuration set for the thread, the response's closers and the signal
again when the server closes it. `LeanApplication` answers those routes itself, through the
same three middleware in the same order (SecurityMiddleware, UnstorableInputMiddleware, then
the lean answer), each wrapped as Django wraps it (an exception becomes the same response),
and does what the signals' receivers do that matters here: the database connections are
checked after the answer (`close_old_connections`: CONN_MAX_AGE, a connection left unusable;
not before, since a lean answer reconnects a connection that died idle), the debug query log
is cleared when debugging, and an answer of 400 or more is logged as Django logs it.
Every other request, and every request when `API_LEAN_VIEWS` is off, goes to Django as it
came. The same answers reach a client either way (tests/test_lean_wsgi.py compares them);
the test client and `runserver` go through the middleware (core.hot.HotPathMiddleware).
"""

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIRequest, get_path_info, get_script_name
from django.db import close_old_connections, reset_queries
from django.middleware.security import SecurityMiddleware
from django.urls import set_script_prefix
from django.utils.log import log_response

from core.hot import HotPathMiddleware, lean_answer

from .middleware import UnstorableInputMiddleware


class LeanApplication:
    def __init__(self, application):
        self.application = application  # Django's WSGIHandler: everything else
        self.routes = HotPathMiddleware(None)
        # As settings.MIDDLEWARE orders them ahead of the lean answer, each wrapped as
        # BaseHandler.load_middleware wraps it.
        lean = convert_exception_to_response(self._lean)
        unstorable = convert_exception_to_response(UnstorableInputMiddleware(lean))
        self.chain = convert_exception_to_response(SecurityMiddleware(unstorable))

    def __call__(self, environ, start_response):
        # The path as WSGIRequest decodes it, without making one: a WSGIRequest writes the
        # decoded path back into the environ, which Django's handler would then misread.
        path_info = get_path_info(environ) or "/"
        found = self.routes.lean_route(environ["REQUEST_METHOD"].upper(), path_info)
        if found is None:
            return self.application(environ, start_response)
        request = WSGIRequest(environ)  # reads nothing of the body
        request.lean_route = found
        set_script_prefix(get_script_name(environ))
        if settings.DEBUG:
            reset_queries()  # request_started's (the log is kept only when debugging)
        try:
            response = self.chain(request)
        finally:
            # request_finished's (no cache or URL configuration was touched); request_started
            # checks them too, but a lean answer never runs a health check before its first
            # statement and reconnects a connection that died idle (core.hot).
            close_old_connections()
        if response.status_code >= 400:
            log_response("%s: %s", response.reason_phrase, request.path, response=response,
                         request=request)  # fmt: skip
        start_response(f"{response.status_code} {response.reason_phrase}", [*response.items()])
        return [response.content]

    @staticmethod
    def _lean(request):
        return lean_answer(request, request.lean_route)
