"""The server's WSGI application answers the lean routes ahead of Django's handler
(entitlements_site/lean_wsgi.py): a client gets from it what Django's handler answers, on
success and on every kind of refusal, and everything else is Django's."""

import json
import logging
import re
from urllib.parse import unquote_to_bytes

import pytest
from django.core import signals
from django.db import close_old_connections
from django.test import RequestFactory

from core import hot
from customers.models import UsageEvent
from entitlements_site import lean_wsgi, wsgi
from entitlements_site.lean_wsgi import LeanApplication

pytestmark = pytest.mark.django_db
CHECK = "/api/v1/customers/acme/entitlements/data-transfer"
CONSUME = f"{CHECK}/consume"


class Answer:
    def __init__(self, status: str, headers: list, body: bytes):
        self.status, self.headers, self.body = status, dict(headers), body
        self.code = int(status.split()[0])

    def json(self):
        return json.loads(self.body)


def call(application, method, path, body=None, key=None, **extra) -> Answer:
    """`application` called as gunicorn calls it, with the environ of that request."""
    if key:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    content_type = extra.pop("content_type", "application/json")
    data = json.dumps(body) if isinstance(body, dict) else (body or "")
    environ = RequestFactory().generic(method, path, data, content_type, **extra).environ
    # As a server gives it (the factory's request wrote its decoded path back): bytes as latin-1.
    environ["PATH_INFO"] = unquote_to_bytes(path.split("?")[0]).decode("latin-1")
    started = []
    chunks = application(environ, lambda status, headers: started.append((status, headers)))
    try:
        body = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return Answer(*started[0], body)


@pytest.fixture(autouse=True)
def connections_kept(monkeypatch) -> list:
    """As Django's test client does for its handler: the requests' closing of old connections
    is switched off (in a test's transaction the connection is not in autocommit, so it would
    be closed, and the transaction with it). Answers the calls the lean answers made."""
    monkeypatch.setattr(signals.request_started, "receivers", [])
    finished = [
        r for r in signals.request_finished.receivers if r[1]() is not close_old_connections
    ]
    monkeypatch.setattr(signals.request_finished, "receivers", finished)
    monkeypatch.setattr(signals.request_finished, "sender_receivers_cache", {})
    monkeypatch.setattr(signals.request_started, "sender_receivers_cache", {})
    calls = []
    monkeypatch.setattr(lean_wsgi, "close_old_connections", lambda: calls.append(True))
    return calls


def both(method, path, body=None, key=None, **extra) -> tuple[Answer, Answer]:
    """The same request answered by the server's application and by Django's handler."""
    return (
        call(wsgi.application, method, path, body, key, **extra),
        call(wsgi.django_application, method, path, body, key, **extra),
    )


def test_the_server_application_is_the_lean_one():
    assert isinstance(wsgi.application, LeanApplication)
    assert wsgi.application.application is wsgi.django_application


@pytest.mark.parametrize(
    "method, path, body, extra",
    [
        ("GET", CHECK, None, {}),
        ("GET", "/api/v1/customers/acme/entitlements", None, {}),
        ("POST", CONSUME, {"quantity": "1", "event_id": "e-1", "dry_run": True}, {}),
        ("POST", CONSUME, {"quantity": "-1", "event_id": "e-2"}, {}),
        ("POST", CONSUME, {"quantity": "1e400", "event_id": "e-3"}, {}),
        ("POST", CONSUME, '{"quantity": ', {}),
        ("POST", CONSUME, "quantity=1", {"content_type": "text/plain"}),
        ("POST", CONSUME, '["a list"]', {}),
        ("GET", "/api/v1/customers/nobody/entitlements/data-transfer", None, {}),
        ("GET", "/api/v1/customers/acme/entitlements/no-such-feature", None, {}),
        ("GET", "/api/v1/customers/ac%00me/entitlements/data-transfer", None, {}),
        ("GET", CHECK + "?x=%00", None, {}),
        ("GET", CHECK, None, {"HTTP_HOST": "evil.example"}),
        ("DELETE", "/api/v1/customers/acme/entitlements/data-transfer/reservations/r1", None, {}),
    ],
    ids=["check", "check-all", "dry-run", "negative", "huge", "bad-json", "text-plain",
         "not-an-object", "no-customer", "no-feature", "nul-path", "nul-query", "bad-host",
         "no-reservation"],
)  # fmt: skip
def test_a_lean_answer_is_the_one_djangos_handler_gives(customer, api_key, method, path, body,
                                                        extra):  # fmt: skip
    ours, django = both(method, path, body, api_key, **extra)
    assert ours.status == django.status
    assert _unsigned(ours.body) == _unsigned(django.body)
    assert _unsigned(ours.headers) == _unsigned(django.headers)


def _unsigned(answer):
    """An answer without its CSRF token (a page's, such as the 400 of a disallowed host:
    a new one each time)."""
    if isinstance(answer, dict):
        return {name: value for name, value in answer.items() if name != "Set-Cookie"}
    return re.sub(rb'"X-CSRFToken": "[^"]+"', b"", answer)


def test_without_a_key_both_answer_401_with_the_challenge(customer):
    ours, django = both("GET", CHECK)
    assert ours.code == django.code == 401
    assert ours.headers == django.headers
    assert ours.headers["WWW-Authenticate"].startswith("Bearer")
    assert ours.json()["error"]["code"] == "unauthenticated"


def test_a_consume_through_the_server_application_counts_once(customer, api_key):
    body = {"quantity": "2.5", "event_id": "front-1"}
    first = call(wsgi.application, "POST", CONSUME, body, api_key)
    again = call(wsgi.application, "POST", CONSUME, body, api_key)
    assert (first.code, again.code) == (200, 200)
    assert first.headers["Content-Length"] == str(len(first.body))
    assert first.json()["entitlement"]["usage"] == again.json()["entitlement"]["usage"]
    assert UsageEvent.objects.filter(event_id="front-1").count() == 1
    check = call(wsgi.application, "GET", CHECK, key=api_key)
    assert check.json()["usage"] == first.json()["entitlement"]["usage"]


def test_other_requests_are_djangos(customer, api_key, monkeypatch):
    """Pages, the health check, the API's other endpoints: handed to Django untouched."""
    seen = []
    front = LeanApplication(lambda environ, start: seen.append(environ["PATH_INFO"]) or [])
    answered = []
    monkeypatch.setattr(hot, "_answer", lambda *args: answered.append(args))
    for path in ("/healthz", "/api/v1/customers/acme", "/api/v1/nothing", f"{CHECK}/usage"):
        front({**RequestFactory().get(path).environ}, lambda *a: None)
    front({**RequestFactory().post(CHECK).environ}, lambda *a: None)  # POST: not a check
    assert seen == ["/healthz", "/api/v1/customers/acme", "/api/v1/nothing", f"{CHECK}/usage",
                    CHECK]  # fmt: skip
    assert answered == []


LATIN_1_OUTSIDE = [
    "/api/v1/customers/caf%C3%A9",
    "/support/caf%C3%A9-%E6%97%A5",
    "/api/v1/customers/caf%C3%A9/entitlements/x/usage",
    "/api/v1/customers/caf%C3%A9/entitlements/data-transfer",
]


@pytest.mark.parametrize("path", LATIN_1_OUTSIDE)
def test_a_path_outside_latin_1_reaches_django_as_it_came(customer, api_key, path):
    """The environ is handed to Django untouched: its path still in WSGI's latin-1 form (and
    a lean route, here a check of an unknown customer, matches the decoded path)."""
    ours, django = both("GET", path, key=api_key)
    assert (ours.status, _unsigned(ours.body)) == (django.status, _unsigned(django.body))
    assert ours.code < 500


def test_with_the_lean_views_off_django_answers_them(customer, api_key, settings):
    settings.API_LEAN_VIEWS = False
    seen = []
    front = LeanApplication(lambda environ, start: seen.append(environ["PATH_INFO"]) or [])
    front({**RequestFactory().get(CHECK).environ}, lambda *a: None)
    assert seen == [CHECK]


def test_https_redirect_and_security_headers_as_djangos(customer, api_key, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    front = LeanApplication(wsgi.django_application)  # reads the security settings anew
    redirected = call(front, "GET", CHECK, key=api_key)
    assert redirected.code == 301
    assert redirected.headers["Location"] == f"https://testserver{CHECK}"
    secure = call(front, "GET", CHECK, key=api_key, **{"wsgi.url_scheme": "https"})
    assert secure.code == 200
    assert secure.headers["Strict-Transport-Security"] == "max-age=3600"
    assert secure.headers["X-Content-Type-Options"] == "nosniff"


def test_an_unexpected_error_is_djangos_500_and_logged(customer, api_key, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(hot, "_answer_reconnecting", broken)
    with caplog.at_level(logging.ERROR, logger="django.request"):
        ours = call(wsgi.application, "GET", CHECK, key=api_key)
    assert ours.code == 500
    assert "the engine broke" in caplog.text
    assert ours.headers["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware's, still


def test_a_refusal_is_logged_as_djangos_handler_logs_it(customer, caplog):
    with caplog.at_level(logging.WARNING, logger="django.request"):
        call(wsgi.application, "GET", CHECK)
    assert f"Unauthorized: {CHECK}" in caplog.text


def test_old_connections_are_closed_after_the_answer(customer, api_key, connections_kept):
    """As request_finished's receiver would: CONN_MAX_AGE, and a connection left unusable."""
    assert call(wsgi.application, "GET", CHECK, key=api_key).code == 200
    assert connections_kept == [True]
    assert call(wsgi.application, "GET", CHECK).code == 401
    assert connections_kept == [True, True]
