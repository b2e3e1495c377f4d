import logging
import uuid

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from kombu import Connection

logger = logging.getLogger(__name__)

# A readiness probe answers well within a load balancer's timeout, even with the broker gone.
BROKER_TIMEOUT_SECONDS = 2


# The login page. Locked-out sign-ins (10 failures for a username from one address) are refused
# before the password is checked, with a 429 and the page saying when to try again: django-axes
# does it for this page and the admin's alike (see lockout.py).
login = auth_views.LoginView.as_view(redirect_authenticated_user=True)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The landing page after login: an end customer goes straight to their dashboard; staff
    see links to what their roles may open."""
    if hasattr(request.user, "customer_user") and not request.user.is_staff:
        return redirect("dashboard:overview")
    return render(request, "home.html")


def healthz(request: HttpRequest) -> JsonResponse:
    """Process alive; touches nothing else (the benchmark's floor)."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to serve: the database answers, the broker (when configured) accepts a connection
    and the cache stores and returns a value. 200 when all hold, else 503 naming what failed
    by name only ("database", "broker", "cache"): anyone may call it (load balancers do), so
    the error itself (addresses, ports, messages) goes to the log. Never raises."""
    checks: dict[str, str] = {}
    for name, probe in (("database", _database), ("broker", _broker), ("cache", _cache)):
        try:
            checks[name] = probe()
        except Exception:  # noqa: BLE001 - a probe reports, it never raises
            logger.warning("readyz: the %s check failed", name, exc_info=True)
            checks[name] = "error"
    down = [name for name, state in checks.items() if state == "error"]
    if down:
        return JsonResponse(
            {"status": "unavailable", "checks": checks, "unavailable": down}, status=503
        )
    return JsonResponse({"status": "ready", "checks": checks})


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _broker() -> str:
    url = settings.CELERY_BROKER_URL
    if not url:
        return "not configured"  # tasks run in-process
    with Connection(
        url,
        connect_timeout=BROKER_TIMEOUT_SECONDS,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    ) as broker:
        # max_retries=0: one attempt; a probe reports the outage instead of waiting it out.
        broker.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT_SECONDS)
    return "ok"


def _cache() -> str:
    # A key of its own per probe, so that concurrent probes never read each other's value.
    key = f"readyz:{uuid.uuid4().hex}"
    cache.set(key, "ok", timeout=10)
    stored = cache.get(key)
    cache.delete(key)
    if stored != "ok":
        raise RuntimeError("the cache did not return the value just stored")
    return "ok"
