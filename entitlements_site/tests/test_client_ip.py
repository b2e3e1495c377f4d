"""The client address login lockouts count (client_ip.py): X-Forwarded-For is believed only
from trusted proxies, read from the right, so a client cannot choose its own address."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory

from core.client_ip import client_ip, trusted_proxies

ROOT = Path(__file__).resolve().parents[2]
PROXIES = ["10.0.0.0/24", "2001:db8:ffff::1"]


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "expected"),
    [
        # No trusted proxy (the default): the peer, whatever the header says
        ([], "203.0.113.5", "192.0.2.9", "203.0.113.5"),
        ([], "203.0.113.5", "", "203.0.113.5"),
        # An untrusted peer's header is ignored even when proxies are configured
        (PROXIES, "203.0.113.5", "192.0.2.9", "203.0.113.5"),
        # A trusted proxy's entry is the client; what the client wrote (left) is not
        (PROXIES, "10.0.0.2", "192.0.2.9", "192.0.2.9"),
        (PROXIES, "10.0.0.2", "6.6.6.6, 192.0.2.9", "192.0.2.9"),
        (PROXIES, "10.0.0.2", "6.6.6.6,192.0.2.9", "192.0.2.9"),
        # Two trusted proxies in a row are skipped
        (PROXIES, "10.0.0.2", "6.6.6.6, 192.0.2.9, 10.0.0.7", "192.0.2.9"),
        (PROXIES, "2001:db8:ffff::1", "2001:db8::42, 10.0.0.3", "2001:db8::42"),
        # The proxy itself (a probe), or a chain of trusted proxies only
        (PROXIES, "10.0.0.2", "", "10.0.0.2"),
        (PROXIES, "10.0.0.2", "10.0.0.9", "10.0.0.9"),
        # An entry that is not an address stops the walk at the last proxy
        (PROXIES, "10.0.0.2", "192.0.2.9, not-an-address", "10.0.0.2"),
        (PROXIES, "10.0.0.2", "not-an-address, 192.0.2.9", "192.0.2.9"),
        # Ports some proxies append, and IPv4 written as IPv6
        (PROXIES, "10.0.0.2", "192.0.2.9:51234", "192.0.2.9"),
        (PROXIES, "10.0.0.2", "[2001:db8::1]:443", "2001:db8::1"),
        (PROXIES, "::ffff:10.0.0.2", "192.0.2.9", "192.0.2.9"),
        ([], "::ffff:203.0.113.5", "", "203.0.113.5"),
    ],
)
def test_client_ip(settings, trusted, peer, forwarded, expected):
    settings.TRUSTED_PROXIES = trusted
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_a_request_without_a_peer_address_has_none(settings):
    request = RequestFactory().get("/")
    request.META.pop("REMOTE_ADDR")
    assert client_ip(request) is None


def test_a_malformed_trusted_proxy_is_a_configuration_error():
    with pytest.raises(ImproperlyConfigured, match="'10.0.0.0/33'"):
        trusted_proxies(("10.0.0.1", "10.0.0.0/33"))

    # ... found when the settings load, not at someone's sign-in
    started = _settings_load(DJANGO_TRUSTED_PROXIES="10.0.0.1,proxy.internal")
    assert started.returncode != 0
    assert "'proxy.internal' is not an IP address or network" in started.stderr


def _settings_load(**environment) -> subprocess.CompletedProcess:
    ours = ("DJANGO_PROXY_COUNT", "DJANGO_TRUSTED_PROXIES")
    env = {name: value for name, value in os.environ.items() if name not in ours}
    env.update(environment)
    return subprocess.run(
        [sys.executable, "-c", "import entitlements_site.settings"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_old_proxy_count_setting_stops_the_start_with_what_to_set_instead():
    # Given a deployment that still sets DJANGO_PROXY_COUNT (believed any X-Forwarded-For)
    # When the settings load, Then they refuse, naming the new setting
    old = _settings_load(DJANGO_PROXY_COUNT="1")
    assert old.returncode != 0
    assert "DJANGO_TRUSTED_PROXIES" in old.stderr

    # And with the trusted proxies set, they load
    new = _settings_load(DJANGO_PROXY_COUNT="1", DJANGO_TRUSTED_PROXIES="10.0.0.0/8")
    assert new.returncode == 0, new.stderr
