"""The client's address, as login lockouts count it (settings.AXES_CLIENT_IP_CALLABLE).

REMOTE_ADDR is the peer that opened the connection: nobody can forge it. X-Forwarded-For is
whatever the sender wrote, so it is read only when the peer is a trusted reverse proxy
(settings.TRUSTED_PROXIES, from DJANGO_TRUSTED_PROXIES). Each proxy appends the address it
received the request from; walking the header from the right, every entry written by a
trusted proxy is reliable, and the first address that is not itself a trusted proxy is the
client. Anything further left came from the client and is ignored. With the app server
reached directly (an untrusted peer), the header is ignored altogether.
"""

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(request: HttpRequest) -> str | None:
    """The address to count failed sign-ins against; None when the connection has none (a
    request built in-process, e.g. the test client's login())."""
    peer = _address(request.META.get("REMOTE_ADDR", ""))
    if peer is None:
        return None
    networks = trusted_proxies(tuple(settings.TRUSTED_PROXIES))
    client = peer
    if _is_trusted(client, networks):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        for entry in reversed(forwarded):
            hop = _address(entry)
            if hop is None:
                # A trusted proxy wrote only addresses; an entry that is not one means the
                # chain is broken here: the last proxy before it is the best we know.
                break
            client = hop
            if not _is_trusted(hop, networks):
                break
    return str(client)


@lru_cache(maxsize=8)
def trusted_proxies(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The trusted proxies as networks ("10.0.0.5", "10.0.0.0/8", "2001:db8::/32"). A
    malformed entry is a configuration error, raised at startup (settings) rather than
    guessed around."""
    networks = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as error:
            raise ImproperlyConfigured(
                f"DJANGO_TRUSTED_PROXIES: {entry!r} is not an IP address or network"
            ) from error
    return tuple(networks)


def _is_trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


def _address(text: str) -> Address | None:
    """An address from REMOTE_ADDR or one X-Forwarded-For entry: "192.0.2.1",
    "2001:db8::1", and the forms some proxies append with a port ("192.0.2.1:51234",
    "[2001:db8::1]:443"). None for anything else."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client may arrive as ::ffff:a.b.c.d on a dual-stack socket: the same client.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address
