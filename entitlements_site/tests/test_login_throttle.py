"""Login lockout (issue 23, django-axes): 10 failed sign-ins for one username from one client
address lock that pair for 15 minutes; the 11th attempt answers 429 with "Try again in N
minutes" without checking the password. The owner still signs in from another address and
other users from this one, so nobody can lock someone else out; both login pages share it.
Two web processes agreeing on a lockout is in test_login_lockout_processes.py."""

import re
from datetime import timedelta

import pytest
from axes.handlers import proxy as axes_proxy
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.urls import reverse
from django.utils import timezone

PASSWORD = "correct horse battery staple"
LIMIT = 10
TRY_AGAIN = re.compile(r"Too many failed sign-in attempts\. Try again in (\d+) minutes?\.")
HOME = "192.0.2.1"
ELSEWHERE = "198.51.100.7"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Clock:
    """Axes' clock (each attempt's time, and so the cool-off), moved on by a test."""

    def __init__(self):
        self.now = timezone.now()

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(axes_proxy, "now", clock)
    return clock


@pytest.fixture
def support(db):
    return get_user_model().objects.create_user("support", password=PASSWORD, is_staff=True)


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password=PASSWORD)


def sign_in(client, username, password, *, ip=HOME, path=None, **extra):
    return client.post(
        path or reverse("login"),
        {"username": username, "password": password},
        REMOTE_ADDR=ip,
        **extra,
    )


def fail(client, username, times=LIMIT, **kwargs):
    """Failed sign-ins, each answered as a failure (the form again, with its error)."""
    for _ in range(times):
        response = sign_in(client, username, "wrong password", **kwargs)
        assert response.status_code == 200
        assert b"Please enter a correct username and password" in response.content


@pytest.fixture
def authentications(monkeypatch):
    """Every password check: the username of each sign-in that reached the password backend
    (django-axes refuses a locked one before it)."""
    calls = []
    real = ModelBackend.authenticate

    def spy(self, request, username=None, password=None, **kwargs):
        calls.append(username)
        return real(self, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", spy)
    return calls


def assert_refused(response):
    assert response.status_code == 429
    minutes = int(TRY_AGAIN.search(response.content.decode())[1])
    assert 1 <= minutes <= 15
    assert 1 <= int(response["Retry-After"]) <= 15 * 60
    assert "_auth_user_id" not in response.wsgi_request.session


def assert_signed_in(response):
    assert response.status_code == 302
    assert "_auth_user_id" in response.wsgi_request.session


def test_ten_failures_from_one_address_do_not_stop_the_owner_from_another(client, support):
    # Given ten failed sign-ins for support from one address (someone else guessing)
    fail(client, "support", ip=HOME)

    # When support signs in with the right password from their own address
    response = sign_in(client, "support", PASSWORD, ip=ELSEWHERE)

    # Then they are in
    assert_signed_in(response)


def test_the_eleventh_attempt_is_refused_without_checking_the_password(
    client, support, authentications
):
    # Given ten failures for support from one address, each checked and answered as such
    fail(client, "support")
    assert len(authentications) == LIMIT

    # When the right password comes from that address
    response = sign_in(client, "support", PASSWORD)

    # Then it is refused with a 429 saying when to try again, and no password was checked
    assert_refused(response)
    assert int(response["Retry-After"]) == 15 * 60
    assert b"Try again in 15 minutes." in response.content
    assert len(authentications) == LIMIT
    # The page is the login page, in the site's look, with the username kept
    assert b"<h1>Log in</h1>" in response.content
    assert b'value="support"' in response.content


def test_the_lockout_does_not_tell_whether_the_username_exists(client, support):
    # Given ten failures each for an existing and a made-up username
    fail(client, "support")
    fail(client, "no-such-user")

    # When both are tried again
    existing = sign_in(client, "support", PASSWORD)
    made_up = sign_in(client, "no-such-user", PASSWORD)

    # Then both answers say the same thing
    assert existing.status_code == made_up.status_code == 429
    assert existing["Retry-After"] == made_up["Retry-After"]
    said = [TRY_AGAIN.search(r.content.decode())[0] for r in (existing, made_up)]
    assert said[0] == said[1]


def test_an_address_is_not_locked_for_other_usernames(client, support, alice):
    # Given support locked out from an address
    fail(client, "support")
    assert_refused(sign_in(client, "support", PASSWORD))

    # When alice signs in from that same address
    response = sign_in(client, "alice", PASSWORD)

    # Then she is in
    assert_signed_in(response)


def test_a_success_resets_the_count(client, support):
    # Given nine failures, then the right password
    fail(client, "support", times=LIMIT - 1)
    assert_signed_in(sign_in(client, "support", PASSWORD))
    client.post(reverse("logout"))

    # When nine more failures follow (eighteen in all)
    fail(client, "support", times=LIMIT - 1)

    # Then the right password still signs in: the count started again at the success
    assert_signed_in(sign_in(client, "support", PASSWORD))


def test_the_page_itself_still_opens_while_locked(client, support):
    fail(client, "support")
    response = client.get(reverse("login"), REMOTE_ADDR=HOME)
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


def test_after_the_cool_off_the_owner_signs_in_again(client, support, clock):
    # Given support locked out from an address, and refused again near the end of the
    # cool-off (a refused attempt does not start it again)
    fail(client, "support")
    clock.now += timedelta(minutes=14)
    refused = sign_in(client, "support", PASSWORD)
    assert_refused(refused)
    assert b"Try again in 1 minute." in refused.content
    assert 1 <= int(refused["Retry-After"]) <= 60

    # When fifteen minutes have passed since the tenth failure
    clock.now += timedelta(minutes=1, seconds=1)

    # Then the right password signs in
    assert_signed_in(sign_in(client, "support", PASSWORD))


def test_the_admin_login_shares_the_lockout(client, support, authentications):
    # Given five failures on our login page and five on the admin's
    admin_login = reverse("admin:login")
    fail(client, "support", times=LIMIT // 2)
    for _ in range(LIMIT // 2):
        response = sign_in(client, "support", "wrong password", path=admin_login)
        assert response.status_code == 200
        assert b"Please enter the correct username and password" in response.content
    assert len(authentications) == LIMIT

    # When the right password is tried on the admin's page, then on ours
    on_admin = sign_in(client, "support", PASSWORD, path=admin_login)
    on_ours = sign_in(client, "support", PASSWORD)

    # Then both refuse without checking it; the admin's page keeps the admin's look
    assert_refused(on_admin)
    assert b"Entitlements administration" in on_admin.content
    assert_refused(on_ours)
    assert len(authentications) == LIMIT

    # And from another address the admin lets support in
    response = sign_in(client, "support", PASSWORD, ip=ELSEWHERE, path=admin_login)
    assert_signed_in(response)


def test_a_forged_x_forwarded_for_from_an_untrusted_peer_is_ignored(client, support, settings):
    # Given no trusted proxy (the app server reached directly) and an attacker who writes a
    # new X-Forwarded-For on every attempt
    settings.TRUSTED_PROXIES = []
    for n in range(LIMIT):
        response = sign_in(
            client, "support", "wrong", ip="203.0.113.5", HTTP_X_FORWARDED_FOR=f"10.9.8.{n}"
        )
        assert response.status_code == 200

    # When the eleventh attempt comes, with yet another header
    response = sign_in(
        client, "support", PASSWORD, ip="203.0.113.5", HTTP_X_FORWARDED_FOR="10.9.8.200"
    )

    # Then it is refused: all of them came from the one address that connected
    assert_refused(response)


def test_behind_a_trusted_proxy_the_real_client_is_counted(client, support, settings):
    # Given a trusted proxy that appends the address it saw; the client forges the rest
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    proxy = "10.0.0.2"
    for n in range(LIMIT):
        fail(
            client,
            "support",
            times=1,
            ip=proxy,
            HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 192.0.2.50",
        )

    # When the right password comes through the proxy from that client, and from another
    refused = sign_in(client, "support", PASSWORD, ip=proxy, HTTP_X_FORWARDED_FOR="192.0.2.50")
    other = sign_in(client, "support", PASSWORD, ip=proxy, HTTP_X_FORWARDED_FOR="192.0.2.51")

    # Then the client who failed ten times is refused and the other signs in
    assert_refused(refused)
    assert_signed_in(other)
