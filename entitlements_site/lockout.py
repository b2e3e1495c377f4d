"""Login lockout: how django-axes is wired into our login pages (settings "Login lockout").

Axes counts failed sign-ins per username and client address in the database (so every web
process agrees) and refuses a locked pair in its authentication backend, before any password
is checked. This module decides what a refused visitor sees: the same login page (ours or
the admin's) with "Too many failed sign-in attempts. Try again in N minutes.", a 429 and
Retry-After. The message is the same whether or not the username exists.
"""

import math
from datetime import datetime, timedelta

from axes.backends import AxesStandaloneBackend
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import ngettext


class LoginLockoutBackend(AxesStandaloneBackend):
    """Axes' lockout check, for sign-ins over HTTP only. authenticate() without a request
    (the test client's login(), a shell) comes from no address, so there is nothing to lock:
    it goes on to the next backend instead of raising as Axes' own backend does."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict | None = None,
) -> HttpResponse:
    """settings.AXES_LOCKOUT_CALLABLE: the answer to a login attempt made while locked.

    Axes also calls it for the failure that reaches the limit; that attempt's password was
    checked, so it is answered like any other failure and the next attempt is the one
    refused ("ten failures, the eleventh is refused"). Axes marks the attempts it refused
    unchecked by not counting them (AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT off)."""
    if getattr(request, "axes_failures_since_start", None) is not None and original_response:
        return original_response

    wait = lockout_seconds_left(request, credentials)
    minutes = math.ceil(wait / 60)
    message = ngettext(
        "Too many failed sign-in attempts. Try again in %(minutes)d minute.",
        "Too many failed sign-in attempts. Try again in %(minutes)d minutes.",
        minutes,
    ) % {"minutes": minutes}

    response = original_response
    form = (getattr(response, "context_data", None) or {}).get("form")
    if not (isinstance(response, TemplateResponse) and isinstance(form, AuthenticationForm)):
        # Not one of our login pages (nothing to show the message on): our page. The form is
        # bound without a password, so rendering it checks none.
        username = (credentials or {}).get("username") or request.POST.get("username", "")
        form = AuthenticationForm(request, data={"username": username})
        response = TemplateResponse(request, "registration/login.html", {"form": form})
    # The page the login view rendered (ours or the admin's, in its own look), with the
    # lockout in place of the form's errors.
    form.errors.clear()
    form.add_error(None, ValidationError(message, code="locked_out"))
    response.content = response.rendered_content
    response.status_code = 429
    response["Retry-After"] = str(wait)
    return response


def lockout_seconds_left(request: HttpRequest, credentials: dict | None = None) -> int:
    """Seconds until this username may sign in again from this address: the cool-off counts
    from the last failure that was recorded. At least 1."""
    handler = AxesProxyHandler.get_implementation()
    latest: datetime | None = None
    for attempts in handler.get_user_attempts(request, credentials):
        last = attempts.aggregate(last=Max("attempt_time"))["last"]
        if last is not None and (latest is None or last > latest):
            latest = last
    now = getattr(request, "axes_attempt_time", None) or timezone.now()
    cool_off = get_cool_off(request) or timedelta(0)
    if latest is None:  # unlocked since (axes_reset): the whole cool-off, to be safe
        return max(math.ceil(cool_off.total_seconds()), 1)
    return max(math.ceil((latest + cool_off - now).total_seconds()), 1)
