"""Portal sessions: create one for the API; open one from its URL.

Opening a link signs the visitor in as the customer's portal login (a login of its own per
customer, which has no password and no staff rights), after ending whatever session the
browser had: a link never adds a customer to a staff session or to another customer's.
"""

import datetime as dt
import logging
import secrets
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model, login, logout
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from core.errors import InvalidInput
from customers.models import Customer, CustomerUser

from .models import PortalSession, portal_token_hash

logger = logging.getLogger(__name__)

RETURN_URL_SESSION_KEY = "portal_return_url"
PORTAL_USERNAME = "portal-{pk}"


def _return_url_clean(return_url) -> str:
    if return_url in (None, ""):
        return ""
    problem = None
    if not isinstance(return_url, str) or len(return_url) > 2000:
        problem = "return_url is an http(s) URL of at most 2000 characters."
    else:
        parts = urlsplit(return_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or "\x00" in return_url:
            problem = "return_url must be an absolute http:// or https:// URL."
    if problem:
        raise InvalidInput(f"return_url: {problem}", details={"return_url": [problem]})
    return return_url


@transaction.atomic
def portal_session_create(
    *, customer: Customer, return_url: str | None = None, at: dt.datetime | None = None
) -> tuple[PortalSession, str]:
    """A single-use link into `customer`'s dashboard, valid PORTAL_SESSION_TTL seconds; returns
    the row and the URL (shown once: only its token's hash is stored). Raises InvalidInput for
    a `return_url` that is not an absolute http(s) URL."""
    return_url = _return_url_clean(return_url)
    at = at or timezone.now()
    token = secrets.token_urlsafe(32)
    session = PortalSession.objects.create(
        customer=customer,
        token_hash=portal_token_hash(token),
        return_url=return_url,
        expires_at=at + dt.timedelta(seconds=settings.PORTAL_SESSION_TTL),
    )
    path = reverse("dashboard:portal_enter", args=[token])
    return session, settings.SITE_URL.rstrip("/") + path


@transaction.atomic
def portal_session_open(request, token: str) -> PortalSession | None:
    """Spends the link of `token` and signs the browser in to its customer's dashboard; None
    (and nothing changed) when the link is unknown, used or expired. Two opens of one link at
    once: exactly one wins (the conditional UPDATE)."""
    now = timezone.now()
    spent = PortalSession.objects.filter(
        token_hash=portal_token_hash(token), used_at__isnull=True, expires_at__gt=now
    ).update(used_at=now)
    if spent != 1:
        return None
    session = PortalSession.objects.select_related("customer").get(
        token_hash=portal_token_hash(token)
    )
    try:
        user = _portal_user(session.customer)
    except PortalLoginTaken:
        logger.error("Portal link refused", exc_info=True)
        return None
    logout(request)  # whatever session the browser had (staff, another customer) ends here
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    request.session[RETURN_URL_SESSION_KEY] = session.return_url
    return session


def _portal_user(customer: Customer):
    """The customer's portal login: no password (it cannot sign in on the login page), no staff
    rights, linked to that customer only."""
    User = get_user_model()
    user, created = User.objects.get_or_create(
        username=PORTAL_USERNAME.format(pk=customer.pk),
        defaults={"is_staff": False, "is_superuser": False, "first_name": customer.name[:150]},
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
        CustomerUser.objects.create(user=user, customer=customer)
    link = CustomerUser.objects.filter(user=user).first()
    if (
        link is None
        or link.customer_id != customer.pk
        or user.is_staff
        or user.is_superuser
        or user.has_usable_password()
    ):
        # Someone made a login of that name by hand: never sign a link's visitor in as it.
        raise PortalLoginTaken(f"The login {user.username!r} is not {customer}'s portal login.")
    return user


class PortalLoginTaken(Exception):
    pass
