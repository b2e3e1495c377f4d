"""Login throttling (issue 9): 10 failed sign-ins per 15 minutes per client IP and per
username; past that the login pages answer 429 with "Try again in N minutes" and do not check
the password, until the window has passed."""

import re
import time

import pytest
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import get_user_model
from django.test import RequestFactory
from django.urls import reverse
from django_ratelimit import core as ratelimit_core

from entitlements_site.login_throttle import client_ip

PASSWORD = "correct horse battery staple"
LIMIT = 10
TRY_AGAIN = re.compile(r"Too many failed sign-in attempts\. Try again in (\d+) minutes?\.")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Clock:
    """django-ratelimit's clock (its module's `time`), standing still unless a test moves it:
    a test's attempts never straddle two of its fixed windows."""

    def __init__(self):
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(ratelimit_core, "time", clock)
    return clock


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob", password=PASSWORD, is_staff=True)


def sign_in(client, username, password, *, ip="192.0.2.1", path=None, **extra):
    return client.post(
        path or reverse("login"),
        {"username": username, "password": password},
        REMOTE_ADDR=ip,
        **extra,
    )


def fail(client, username, times=LIMIT, **kwargs):
    for _ in range(times):
        response = sign_in(client, username, "wrong password", **kwargs)
        assert response.status_code == 200  # the form again, with its error
        assert b"Please enter a correct username and password" in response.content


@pytest.fixture
def authentications(monkeypatch):
    """Every password check the login form makes."""
    calls = []
    real = auth_forms.authenticate

    def spy(request=None, **credentials):
        calls.append(credentials.get("username"))
        return real(request, **credentials)

    monkeypatch.setattr(auth_forms, "authenticate", spy)
    return calls


def assert_refused(response):
    assert response.status_code == 429
    minutes = int(TRY_AGAIN.search(response.content.decode())[1])
    assert 1 <= minutes <= 15
    assert 1 <= int(response["Retry-After"]) <= 15 * 60
    assert "_auth_user_id" not in response.wsgi_request.session


def test_the_eleventh_attempt_is_refused_without_checking_the_password(
    client, alice, authentications
):
    fail(client, "alice")
    assert len(authentications) == LIMIT

    # Even the right password: refused, and not checked.
    assert_refused(sign_in(client, "alice", PASSWORD))
    assert len(authentications) == LIMIT


def test_a_username_is_throttled_whatever_the_address(client, alice, bob):
    for n in range(LIMIT):
        fail(client, "alice", times=1, ip=f"198.51.100.{n}")
    assert_refused(sign_in(client, "Alice", PASSWORD, ip="203.0.113.9"))  # any case

    # Another user from the same addresses is not affected.
    assert sign_in(client, "bob", PASSWORD, ip="198.51.100.1").status_code == 302


def test_an_address_is_throttled_whatever_the_username(client, alice):
    for n in range(LIMIT):
        fail(client, f"nobody-{n}", times=1, ip="192.0.2.7")
    assert_refused(sign_in(client, "alice", PASSWORD, ip="192.0.2.7"))

    # Alice from her own address signs in.
    assert sign_in(client, "alice", PASSWORD, ip="192.0.2.8").status_code == 302


def test_fewer_failures_and_successful_sign_ins_do_not_lock_anyone_out(client, alice):
    fail(client, "alice", times=LIMIT - 1)
    for _ in range(3):
        assert sign_in(client, "alice", PASSWORD).status_code == 302
        client.post(reverse("logout"))
    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_the_page_itself_still_opens_while_throttled(client, alice):
    fail(client, "alice")
    response = client.get(reverse("login"), REMOTE_ADDR="192.0.2.1")
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


def test_after_the_window_the_user_may_sign_in_again(client, alice, clock):
    fail(client, "alice")
    assert_refused(sign_in(client, "alice", PASSWORD))

    clock.now += 15 * 60 + 1
    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_the_admin_login_is_throttled_with_the_same_counters(client, bob, authentications):
    admin_login = reverse("admin:login")
    fail(client, "bob", times=LIMIT // 2)
    for _ in range(LIMIT // 2):
        response = sign_in(client, "bob", "wrong password", path=admin_login)
        assert response.status_code == 200
    assert len(authentications) == LIMIT

    response = sign_in(client, "bob", PASSWORD, path=admin_login)
    assert_refused(response)
    assert len(authentications) == LIMIT
    assert_refused(sign_in(client, "bob", PASSWORD))


def test_behind_a_proxy_each_client_is_counted_apart(client, alice, settings):
    settings.PROXY_COUNT = 1
    proxy = "10.0.0.2"
    for n in range(LIMIT):
        # What the client wrote itself (left) is not trusted; the proxy appended the address.
        fail(
            client, f"nobody-{n}", times=1, ip=proxy, HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 192.0.2.50"
        )
    refused = sign_in(client, "alice", PASSWORD, ip=proxy, HTTP_X_FORWARDED_FOR="192.0.2.50")
    assert_refused(refused)

    other = sign_in(client, "alice", PASSWORD, ip=proxy, HTTP_X_FORWARDED_FOR="192.0.2.51")
    assert other.status_code == 302


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "192.0.2.9", "10.0.0.2"),  # no proxy configured: the header is the client's own
        (1, "", "10.0.0.2"),
        (1, "192.0.2.9", "192.0.2.9"),
        (1, "6.6.6.6, 192.0.2.9", "192.0.2.9"),
        (2, "6.6.6.6, 192.0.2.9, 10.0.0.1", "192.0.2.9"),
        (1, "not-an-address", "0.0.0.0"),
        (1, "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_ip(settings, proxies, forwarded, expected):
    settings.PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_with_the_cache_down_sign_in_still_works_unthrottled(client, alice, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        }
    }
    fail(client, "alice", times=LIMIT + 1)
    assert sign_in(client, "alice", PASSWORD).status_code == 302
