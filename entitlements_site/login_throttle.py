"""Login throttling for the pages (issue 9).

Failed sign-ins are counted per client IP and per username in the shared cache (the
django-ratelimit library's counters, fixed windows); past settings.LOGIN_FAILURE_RATE (10 per
15 minutes) the login forms refuse before checking the password, saying when to try again, and
the views answer 429 with Retry-After. Both login pages use it: /accounts/login/ and the
admin's.

Fails open: with the cache down, sign-in works unthrottled (a warning is logged) rather than
locking everyone out, as the API's throttle does.
"""

import ipaddress
import logging
import math
from functools import wraps

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.utils.translation import ngettext
from django_ratelimit.core import get_usage

logger = logging.getLogger(__name__)


def client_ip(request) -> str:
    """The address counted per IP (settings.RATELIMIT_IP_META_KEY names this function).

    REMOTE_ADDR; behind settings.PROXY_COUNT reverse proxies that append to X-Forwarded-For,
    the address the outermost of them saw (the N-th entry from the right: entries further
    left are the client's own to forge)."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = getattr(settings, "PROXY_COUNT", 0)
    if proxies:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        forwarded = [address.strip() for address in forwarded if address.strip()]
        if len(forwarded) >= proxies:
            remote = forwarded[-proxies]
    try:
        return str(ipaddress.ip_address(remote))
    except ValueError:
        return "0.0.0.0"  # unknown: one shared bucket rather than none


def _usages(request, username: str, *, increment: bool):
    """django-ratelimit's usage of each counter: per IP, and per username when one is given
    (case-insensitively: "Alice" and "alice" share it)."""
    counters = [("login-ip", "ip")]
    name = username.strip().lower()
    if name:
        counters.append(("login-username", lambda group, request: name))
    for group, key in counters:
        try:
            usage = get_usage(
                request,
                group=group,
                key=key,
                rate=settings.LOGIN_FAILURE_RATE,
                increment=increment,
            )
        except Exception:  # noqa: BLE001 - the cache is down: fail open, say so
            logger.warning(
                "login throttle: the cache is unavailable; not throttling", exc_info=True
            )
            continue
        if usage is not None:  # None: RATELIMIT_ENABLE is off
            yield usage


def login_retry_after(request, username: str) -> int | None:
    """Seconds until this client or username may try again; None when it may try now."""
    waits = [
        max(usage["time_left"], 1)
        for usage in _usages(request, username, increment=False)
        if usage["count"] >= usage["limit"]
    ]
    return max(waits) if waits else None


def login_failure_record(request, username: str) -> None:
    for _ in _usages(request, username, increment=True):
        pass


class ThrottledLoginMixin:
    """For an AuthenticationForm: refuses while throttled, without authenticating (so without
    checking the password); counts each failed authentication. `retry_after` (seconds) is set
    when it refused."""

    retry_after: int | None = None

    def clean(self):
        username = self.data.get(self.add_prefix("username"), "")
        wait = login_retry_after(self.request, username)
        if wait is not None:
            self.retry_after = wait
            minutes = math.ceil(wait / 60)
            raise ValidationError(
                ngettext(
                    "Too many failed sign-in attempts. Try again in %(minutes)d minute.",
                    "Too many failed sign-in attempts. Try again in %(minutes)d minutes.",
                    minutes,
                ),
                code="throttled",
                params={"minutes": minutes},
            )
        try:
            return super().clean()
        except ValidationError:
            login_failure_record(self.request, username)
            raise


class ThrottledLoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


def answers_429_when_throttled(view):
    """Wraps a login view whose form is a ThrottledLoginMixin: a refusal answers 429 with
    Retry-After (the page itself shows the form with the message)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        form = (getattr(response, "context_data", None) or {}).get("form")
        wait = getattr(form, "retry_after", None)
        if wait:
            response.status_code = 429
            response["Retry-After"] = str(wait)
        return response

    return wrapper
