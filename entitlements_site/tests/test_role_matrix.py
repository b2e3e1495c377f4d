"""The role matrix (issue 9): every page and API route, requested as each role, answers as
the explicit tables below say, and an action that is refused leaves the database as it was.

The routes come from the URL configuration (`get_resolver().url_patterns`, walked through
every include and namespace, the admin's too), so a route that is not in a table fails
`test_every_route_is_in_a_table` until someone adds it here on purpose.

Roles, in the order of every row: anonymous; end customer A; end customer B (another
customer: the URLs name A's objects, so B gets 404 wherever the object is A's, and
`test_a_customer_gets_404_for_another_customers_objects` turns it round); a support agent; a
product manager; the business's software with an API key (Bearer header, no session).

    LOGIN        302 to the login page (pages never take the API key: it is a stranger there)
    ADMIN_LOGIN  302 to the admin's login page
    REDIRECT     302 somewhere else (a logged-in user on the login page, a no-JavaScript GET)
    Done(n)      status n, and the action is carried out (the database changed)
    200 ... 409  that status, and the database did not change

POSTs carry a valid CSRF token (the client enforces CSRF checks), so a refusal is the view's
access check, not the CSRF middleware.
"""

import datetime as dt
import itertools
import re
from dataclasses import dataclass
from decimal import Decimal

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.test.client import ClientHandler
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from djmoney.money import Money

from billing.models import Invoice, InvoicePurpose
from billing.services.purchases import topup_purchase
from billing.services.subscriptions import subscription_change_plan, subscription_create
from catalog import services as catalog_services
from catalog.models import Aggregation, FeatureKind
from catalog.tests.factories import (
    FeatureFactory,
    PlanEntitlementFactory,
    PlanFactory,
    TopUpPackFactory,
)
from core.roles import PRODUCT_MANAGERS, SUPPORT
from core.services import api_key_create
from customers import services as customer_services
from customers.engine import reservation_hold, usage_record_batch
from customers.models import (
    Customer,
    Notification,
    WebhookDelivery,
    WebhookEndpoint,
)

LOGIN = "LOGIN"
ADMIN_LOGIN = "ADMIN_LOGIN"
REDIRECT = "REDIRECT"


@dataclass(frozen=True)
class Done:
    status: int


ROLES = ("anonymous", "customer_a", "customer_b", "support", "pm", "api_key")
ALL_200 = (200,) * 6
API_401 = (401,) * 5  # anonymous and every session: the API takes API keys only

# --- the tables ---------------------------------------------------------------------------------
# route: {method: (anonymous, customer A, customer B, support, product manager, API key)}

PM_ONLY = (LOGIN, 403, 403, 403, 200, LOGIN)
SUPPORT_ONLY = (LOGIN, 403, 403, 200, 403, LOGIN)
SUPPORT_POST_ONLY = (LOGIN, 403, 403, 405, 403, LOGIN)  # GET on an action that takes POST
SUPPORT_DOES_IT = (LOGIN, 403, 403, Done(302), 403, LOGIN)
PM_DOES_IT = (LOGIN, 403, 403, 403, Done(302), LOGIN)
PM_POST_ONLY = (LOGIN, 403, 403, 403, 405, LOGIN)  # GET on an action that takes POST
# Dashboard pages: staff logins belong to no customer (the "no customer account" page, 404).
EVERY_CUSTOMER = (LOGIN, 200, 200, 404, 404, LOGIN)
A_ONLY = (LOGIN, 200, 404, 404, 404, LOGIN)  # the object named in the URL is A's

PAGES = {
    "home": {"GET": (LOGIN, REDIRECT, REDIRECT, 200, 200, LOGIN)},  # customers: the dashboard
    "healthz": {"GET": ALL_200},  # load balancers: public by design
    "readyz": {"GET": ALL_200},
    "login": {"GET": (200, REDIRECT, REDIRECT, REDIRECT, REDIRECT, 200)},
    "logout": {"GET": (405,) * 6, "POST": (LOGIN,) * 6},
    # the plan editor: product managers only
    "catalog:plan_list": {"GET": PM_ONLY},
    "catalog:plan_compare": {"GET": PM_ONLY},
    "catalog:plan_detail": {"GET": PM_ONLY},
    "catalog:entitlement_add": {
        "GET": (LOGIN, 403, 403, 403, REDIRECT, LOGIN),  # without htmx: to the plan page
        "POST": PM_DOES_IT,
    },
    "catalog:entitlement_row": {"GET": (LOGIN, 403, 403, 403, REDIRECT, LOGIN)},
    "catalog:entitlement_edit": {"GET": PM_ONLY, "POST": PM_DOES_IT},
    "catalog:entitlement_remove": {"GET": PM_ONLY, "POST": PM_DOES_IT},
    # plan versions (Basic's version 1, superseded, read-only; a draft's page to edit)
    "catalog:plan_version": {"GET": PM_ONLY},
    "catalog:version_entitlement_add": {
        "GET": (LOGIN, 403, 403, 403, REDIRECT, LOGIN),
        "POST": PM_DOES_IT,
    },
    "catalog:version_draft_create": {"GET": PM_POST_ONLY, "POST": PM_DOES_IT},
    "catalog:version_price": {"GET": PM_POST_ONLY, "POST": PM_DOES_IT},
    "catalog:version_publish": {"GET": PM_POST_ONLY, "POST": PM_DOES_IT},
    "catalog:version_duplicate": {"GET": PM_POST_ONLY, "POST": PM_DOES_IT},
    # support: the Support group only (a product manager is not support)
    "support:search": {"GET": SUPPORT_ONLY},
    "support:customer": {"GET": SUPPORT_ONLY},
    "support:change_plan": {"GET": SUPPORT_ONLY, "POST": SUPPORT_DOES_IT},
    "support:grant_add": {"GET": SUPPORT_POST_ONLY, "POST": SUPPORT_DOES_IT},
    "support:grant_void": {"GET": SUPPORT_POST_ONLY, "POST": SUPPORT_DOES_IT},
    "support:topup_sell": {"GET": SUPPORT_POST_ONLY, "POST": SUPPORT_DOES_IT},
    "support:override_add": {"GET": SUPPORT_ONLY, "POST": SUPPORT_DOES_IT},
    "support:override_end": {"GET": SUPPORT_POST_ONLY, "POST": SUPPORT_DOES_IT},
    "support:version_move": {"GET": SUPPORT_POST_ONLY, "POST": SUPPORT_DOES_IT},
    "support:invoice_void": {"GET": SUPPORT_ONLY, "POST": SUPPORT_DOES_IT},
    "support:usage_events": {"GET": SUPPORT_ONLY},
    "support:usage_reverse": {"GET": SUPPORT_ONLY, "POST": SUPPORT_DOES_IT},
    # the end customer's dashboard: the customer comes from the login, never from the URL
    "dashboard:overview": {"GET": EVERY_CUSTOMER},
    "dashboard:topup_packs": {"GET": EVERY_CUSTOMER},  # a feature key: B has storage too
    "dashboard:topup_confirm": {  # a pack offered on A's plan only
        "GET": A_ONLY,
        "POST": (LOGIN, Done(302), 404, 404, 404, LOGIN),
    },
    "dashboard:topup_receipt": {"GET": A_ONLY},
    "dashboard:plans": {"GET": EVERY_CUSTOMER},
    "dashboard:plan_change": {  # a public plan, an upgrade for both
        "GET": EVERY_CUSTOMER,
        # B's confirm names A's current plan as the one it was made from: stale, refused
        "POST": (LOGIN, Done(302), 409, 404, 404, LOGIN),
    },
    "dashboard:plan_changed": {"GET": A_ONLY},
    "dashboard:invoices": {"GET": EVERY_CUSTOMER},
    "dashboard:notifications": {"GET": EVERY_CUSTOMER},
    "dashboard:notification_detail": {"GET": A_ONLY},
    "dashboard:invoice_detail": {"GET": A_ONLY},
    # paying: A's own outstanding invoice (the proration invoice, not charged in this world)
    "dashboard:invoice_pay": {
        "GET": (LOGIN, 405, 405, 404, 404, LOGIN),
        "POST": (LOGIN, Done(302), 404, 404, 404, LOGIN),
    },
    # the compact page for an iframe: no login form inside someone else's page, a 403 page
    "dashboard:embed": {"GET": (403, 200, 200, 403, 403, 403)},
    # a portal link: an unknown (or used, or expired) token is the expired page for anyone
    "dashboard:portal_enter": {"GET": (403,) * 6},
    # printable invoices: staff see any, a customer their own
    "billing:invoice_list": {"GET": (LOGIN, 200, 200, 200, 200, LOGIN)},
    "billing:invoice_detail": {"GET": (LOGIN, 200, 404, 200, 200, LOGIN)},
}

API = {
    "api:schema": {"GET": ALL_200},  # public by design: it describes the API, not data
    "api:docs": {"GET": ALL_200},
    "api/^.*$": {"GET": (404,) * 6},  # unknown API paths: the error JSON, for everyone
    "api:customers": {"GET": (*API_401, 200), "POST": (*API_401, Done(201))},
    "api:customer": {
        "GET": (*API_401, 200),
        "PUT": (*API_401, Done(200)),
        "PATCH": (*API_401, Done(200)),
    },
    "api:entitlements": {"GET": (*API_401, 200)},
    "api:entitlement": {"GET": (*API_401, 200)},
    "api:consume": {"GET": (*API_401, 405), "POST": (*API_401, Done(200))},
    "api:reservations": {"GET": (*API_401, 405), "POST": (*API_401, Done(201))},
    "api:reservation": {"GET": (*API_401, 200), "DELETE": (*API_401, Done(200))},
    "api:reservation-commit": {"GET": (*API_401, 405), "POST": (*API_401, Done(200))},
    "api:usage-buckets": {"GET": (*API_401, 200)},
    "api:usage": {"GET": (*API_401, 405), "POST": (*API_401, Done(200))},
    "api:usage-reversal": {"GET": (*API_401, 405), "POST": (*API_401, Done(201))},
    "api:overrides": {"GET": (*API_401, 200), "POST": (*API_401, Done(201))},
    "api:override": {"GET": (*API_401, 200), "DELETE": (*API_401, Done(204))},
    "api:grants": {"GET": (*API_401, 200), "POST": (*API_401, Done(201))},
    "api:grant": {"GET": (*API_401, 200), "DELETE": (*API_401, Done(204))},
    "api:subscription": {
        "GET": (*API_401, 200),
        "POST": (*API_401, Done(200)),  # an upgrade of the active subscription
        "DELETE": (*API_401, Done(200)),  # cancels at the period end
    },
    "api:topups": {"GET": (*API_401, 405), "POST": (*API_401, Done(201))},
    "api:invoices": {"GET": (*API_401, 200)},
    "api:invoice": {"GET": (*API_401, 200)},
    "api:portal-sessions": {"GET": (*API_401, 405), "POST": (*API_401, Done(201))},
    "api:features": {"GET": (*API_401, 200), "POST": (*API_401, Done(201))},
    "api:feature": {
        "GET": (*API_401, 200),
        "PUT": (*API_401, Done(200)),
        "PATCH": (*API_401, Done(200)),
        "DELETE": (*API_401, Done(204)),
    },
    "api:plans": {"GET": (*API_401, 200), "POST": (*API_401, Done(201))},
    "api:plan": {
        "GET": (*API_401, 200),
        "PUT": (*API_401, Done(200)),
        "PATCH": (*API_401, Done(200)),
        "DELETE": (*API_401, Done(204)),
    },
    "api:plan-versions": {"GET": (*API_401, 200), "POST": (*API_401, Done(201))},
    "api:plan-version": {"GET": (*API_401, 200), "PATCH": (*API_401, Done(200))},
    "api:plan-version-impact": {"GET": (*API_401, 200)},
    "api:plan-version-publish": {"GET": (*API_401, 405), "POST": (*API_401, Done(200))},
    "api:plan-version-duplicate": {"GET": (*API_401, 405), "POST": (*API_401, Done(201))},
    "api:topup-packs": {"GET": (*API_401, 200), "POST": (*API_401, Done(201))},
    "api:topup-pack": {
        "GET": (*API_401, 200),
        "PUT": (*API_401, Done(200)),
        "PATCH": (*API_401, Done(200)),
        "DELETE": (*API_401, Done(204)),
    },
}

# The admin site's own pages. Not staff (anonymous, a customer, the API key) -> its login.
STAFF_ONLY = (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 200, 200, ADMIN_LOGIN)
ADMIN_SITE = {
    "admin:index": {"GET": STAFF_ONLY},
    # A logged-in customer sees the form with "not authorized"; staff go to the index.
    "admin:login": {"GET": (200, 200, 200, REDIRECT, REDIRECT, 200)},
    "admin:logout": {"GET": (REDIRECT, REDIRECT, REDIRECT, 405, 405, REDIRECT)},  # to the index
    "admin:password_change": {"GET": STAFF_ONLY},
    "admin:password_change_done": {"GET": STAFF_ONLY},
    # Without a model and field to complete: refused.
    "admin:autocomplete": {"GET": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, ADMIN_LOGIN)},
    "admin:jsi18n": {"GET": STAFF_ONLY},
    # Changing a user's password takes auth's change_user: no staff role has it.
    "admin:auth_user_password_change": {
        "GET": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 403, 403, ADMIN_LOGIN)
    },
    # No model has a public page: "view on site" finds none.
    "admin:view_on_site": {"GET": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 404, ADMIN_LOGIN)},
    "admin/(?P<url>.*)$": {"GET": (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 404, 404, ADMIN_LOGIN)},
}
# An app's index: staff see the apps they hold a permission in; 404 for the others.
ADMIN_APPS = {
    # app label: (support, product manager)
    "auth": (404, 404),
    "axes": (404, 404),
    "django_celery_beat": (404, 404),
    "core": (404, 404),
    "catalog": (200, 200),
    "customers": (200, 200),
    "billing": (200, 200),
}

# Every registered model's pages, by role: the group permissions of the data migrations,
# narrowed by the ModelAdmins (immutable ledgers, invoices, subscriptions made by billing).
# (changelist, add, change, history, delete, one historical version or "-" where the model
#  keeps no django-simple-history), for support and then for a product manager.
NO_ACCESS = (403, 403, 403, 403, 403, "-")
VIEW = (200, 403, 200, 200, 403, "-")
VIEW_HISTORY = (200, 403, 200, 200, 403, 200)
ADMIN_MODELS = {
    "auth.group": (NO_ACCESS, NO_ACCESS),
    "auth.user": (NO_ACCESS, NO_ACCESS),
    # Login lockouts (django-axes): superusers only; support unlocks with `axes_reset`.
    "axes.accessattempt": (NO_ACCESS, NO_ACCESS),
    "axes.accesslog": (NO_ACCESS, NO_ACCESS),
    "axes.accessfailurelog": (NO_ACCESS, NO_ACCESS),
    "django_celery_beat.periodictask": (NO_ACCESS, NO_ACCESS),
    "django_celery_beat.intervalschedule": (NO_ACCESS, NO_ACCESS),
    "django_celery_beat.crontabschedule": (NO_ACCESS, NO_ACCESS),
    "django_celery_beat.solarschedule": (NO_ACCESS, NO_ACCESS),
    "django_celery_beat.clockedschedule": (NO_ACCESS, NO_ACCESS),
    "core.apikey": (NO_ACCESS, NO_ACCESS),
    "catalog.feature": (VIEW_HISTORY, (200, 200, 200, 200, 200, 200)),
    "catalog.plan": (VIEW_HISTORY, (200, 200, 200, 200, 200, 200)),
    # an entitlement is added on its plan (or in the plan editor), not on its own
    "catalog.planentitlement": (VIEW_HISTORY, (200, 403, 200, 200, 200, 200)),
    # versions change through the plan editor only (publishing goes through its service)
    "catalog.planversion": (VIEW_HISTORY, VIEW_HISTORY),
    "catalog.topuppack": (VIEW_HISTORY, (200, 200, 200, 200, 200, 200)),
    "customers.customer": ((200, 200, 200, 200, 403, 200), VIEW_HISTORY),
    "customers.subscription": ((200, 403, 200, 200, 403, 200), VIEW_HISTORY),
    "customers.entitlementoverride": ((200, 200, 200, 200, 403, 200), VIEW_HISTORY),
    "customers.grant": ((200, 200, 200, 200, 403, 200), VIEW_HISTORY),
    "customers.usageevent": (VIEW, VIEW),
    "customers.usagecounter": (VIEW, VIEW),
    "customers.reservation": (VIEW, VIEW),  # made through the API only
    "customers.notification": (VIEW, VIEW),
    "customers.webhookendpoint": (NO_ACCESS, NO_ACCESS),
    "customers.webhookdelivery": (NO_ACCESS, NO_ACCESS),
    "billing.invoice": (VIEW_HISTORY, VIEW_HISTORY),
    "billing.topuppurchase": (VIEW, VIEW),
    "billing.payment": (VIEW, VIEW),
    "billing.invoiceemail": (VIEW, VIEW),  # receipts and payment notices: read-only
}
ADMIN_MODEL_VIEWS = ("changelist", "add", "change", "history", "delete", "simple_history")
ADMIN_MODEL_ROUTE = re.compile(
    r"^admin:(?P<app>[a-z_]+?)_(?P<model>[a-z]+)_(?P<view>" + "|".join(ADMIN_MODEL_VIEWS) + r")$"
)
# admin/<app>/<model>/<id>/ redirects to the change page: reached through "change" above.
ADMIN_OBJECT_REDIRECT = re.compile(r"^admin/(?P<app>\w+)/(?P<model>\w+)/<path:object_id>/$")


# --- the URL configuration ---------------------------------------------------------------------


def _walk(patterns, prefix="", namespace=None):
    """(route key, full pattern) of every endpoint: "namespace:name", or the pattern itself
    for an unnamed one."""
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = namespace
            if entry.namespace:
                inner = f"{namespace}:{entry.namespace}" if namespace else entry.namespace
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern):
            pattern = prefix + str(entry.pattern)
            if entry.name:
                yield (f"{namespace}:{entry.name}" if namespace else entry.name), pattern, True
            else:
                yield pattern, pattern, False


_ENDPOINTS = list(_walk(get_resolver().url_patterns))
ROUTES = {key: pattern for key, pattern, _ in _ENDPOINTS}
NAMED = {key for key, _, named in _ENDPOINTS if named}
TABLE = {**PAGES, **API, **ADMIN_SITE}


def _model_label(app: str, model: str) -> str:
    return f"{app}.{model}"


def test_every_route_is_in_a_table():
    missing = []
    for key, pattern in ROUTES.items():
        if key in TABLE or key == "admin:app_list":
            continue
        admin_model = ADMIN_MODEL_ROUTE.match(key) or ADMIN_OBJECT_REDIRECT.match(key)
        if admin_model and _model_label(admin_model["app"], admin_model["model"]) in ADMIN_MODELS:
            continue
        missing.append(f"{key}  ({pattern})")
    assert not missing, "Routes missing from the role matrix: add them on purpose:\n" + "\n".join(
        missing
    )
    stale = sorted(set(TABLE) - set(ROUTES))
    assert not stale, f"Table entries for routes that no longer exist: {stale}"


def test_every_admin_model_and_app_is_in_the_tables():
    registered = {
        f"{model._meta.app_label}.{model._meta.model_name}" for model in admin.site._registry
    }
    assert registered == set(ADMIN_MODELS), (
        f"missing: {sorted(registered - set(ADMIN_MODELS))}, "
        f"stale: {sorted(set(ADMIN_MODELS) - registered)}"
    )
    app_labels = {label.split(".")[0] for label in registered}
    assert app_labels == set(ADMIN_APPS)
    for label, (support, pm) in ADMIN_MODELS.items():
        app, model = label.split(".")
        has_versions = f"admin:{app}_{model}_simple_history" in ROUTES
        for row in (support, pm):
            assert (row[5] != "-") == has_versions, f"{label}: the version column is wrong"


def test_api_tables_name_every_method_the_views_answer():
    """A method added to an API view must be added to the table too."""
    resolver = get_resolver()
    for key, methods in API.items():
        if not key.startswith("api:") or key in ("api:schema", "api:docs"):
            continue
        view_class = resolver.resolve(_url_of(key, _sample_kwargs(key))).func.view_class
        answered = {m.upper() for m in ("get", "post", "put", "patch", "delete")}
        answered = {m for m in answered if hasattr(view_class, m.lower())}
        # GET is in the table for every route: a POST-only endpoint answers it with 405.
        assert set(methods) - {"GET"} == answered - {"GET"}, key


def _sample_kwargs(key):
    converters = re.findall(r"<(?:(\w+):)?(\w+)>", ROUTES[key])
    return {name: ("1" if kind == "int" or name == "pk" else "x") for kind, name in converters}


def _url_of(key: str, kwargs: dict) -> str:
    if key in NAMED:
        return reverse(key, kwargs=kwargs)
    return {
        "api/^.*$": "/api/v1/no-such-endpoint",
        "admin/(?P<url>.*)$": "/admin/no-such-page/",
        "admin/login/": "/admin/login/",
    }[key]


# --- the world ----------------------------------------------------------------------------------


@dataclass
class Owned:
    """One customer's login and the objects its URLs name."""

    customer: Customer
    user: object
    pack: object  # offered on this customer's plan only
    purchase: object
    proration_invoice: Invoice
    notification: Notification
    grant: object
    override: object
    reservation: object  # held for a day
    usage_event: object  # of data-transfer: reversible


@dataclass
class World:
    a: Owned
    b: Owned
    support: object
    pm: object
    api_key: str
    basic: object
    business: object
    premium: object
    draft: object  # no subscriber: the API may delete it
    storage: object
    transfer: object
    versioning: object
    spare: object  # in no plan: the plan editor may add it, the API may delete it
    tier_entitlement: object  # Basic's support tier: edited and removed by the plan editor
    spare_pack: object  # bought by nobody: the API may delete it


_events = itertools.count(1)


def _report(customer: Customer, feature_key: str, quantity) -> None:
    result = usage_record_batch(
        [
            {
                "event_id": f"matrix-{next(_events)}",
                "customer": customer.external_id,
                "feature": feature_key,
                "quantity": str(quantity),
            }
        ]
    )
    assert result.accepted == 1, result.rejected


def _staff(username: str, group: str):
    user = get_user_model().objects.create_user(username=username, is_staff=True)
    # get_or_create: a transactional test may have flushed the groups the migrations made.
    user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


def _owned(external_id, name, *, start_plan, plan, pack, period_start) -> Owned:
    customer = Customer.objects.create(
        external_id=external_id, name=name, email=f"ops@{external_id}.test"
    )
    subscription = subscription_create(customer=customer, plan=start_plan, at=period_start)
    change = subscription_change_plan(subscription=subscription, plan=plan)
    assert change.invoice is not None and change.invoice.purpose == InvoicePurpose.PLAN_CHANGE
    _report(customer, "storage", "85")
    user = get_user_model().objects.create_user(username=f"user-{external_id}")
    customer_services.customer_user_link(user=user, customer=customer)
    purchase = topup_purchase(customer=customer, pack=pack, idempotency_key=f"buy-{external_id}")
    now = timezone.now()
    notification = Notification.objects.create(
        customer=customer,
        feature=pack.feature,
        period_start=now - dt.timedelta(days=3),
        threshold=50,
        to=[customer.email],
        status="sent",
        sent_at=now,
        usage=Decimal("85"),
        limit=Decimal("100"),
        capacity=Decimal("100"),
        balance=Decimal("15"),
        unit="GB",
    )
    transfer = pack.feature.__class__.objects.get(key="data-transfer")
    grant = customer_services.grant_create(
        customer=customer, feature=transfer, quantity=Decimal("10"), reason="Goodwill"
    )
    override = customer_services.override_create(
        customer=customer, feature=transfer, reason="Enterprise deal", limit=Decimal("900")
    )
    reservation = reservation_hold(
        customer, transfer, f"hold-{external_id}", "1", ttl_seconds=86400
    ).reservation
    _report(customer, "data-transfer", "3")
    event = customer.usage_events.get(feature__key="data-transfer")
    return Owned(
        reservation=reservation,
        usage_event=event,
        customer=customer,
        user=user,
        pack=pack,
        purchase=purchase,
        proration_invoice=change.invoice,
        notification=notification,
        grant=grant,
        override=override,
    )


@pytest.fixture(scope="module")
def _module_world(django_db_setup, django_db_blocker):
    """The world is built once for the module, in a transaction rolled back at its end; each
    test runs in a savepoint inside it (pytest-django's `db`), so its changes are undone."""
    with django_db_blocker.unblock(), transaction.atomic():
        yield _world_build()
        transaction.set_rollback(True)


@pytest.fixture
def world(_module_world, db) -> World:
    return _module_world


def _world_build() -> World:
    storage = FeatureFactory(
        key="storage", name="Storage", kind=FeatureKind.METERED, unit="GB",
        aggregation=Aggregation.LATEST,
    )  # fmt: skip
    transfer = FeatureFactory(key="data-transfer", name="Data transfer", metered=True)
    versioning = FeatureFactory(key="file-versioning", name="File versioning")
    tier = FeatureFactory(key="support-tier", name="Support tier", config=True)
    spare = FeatureFactory(key="api-calls", name="API calls", metered=True, unit="calls")
    plans = {}
    for key, rank, price, storage_gb in (
        ("starter", 10, "10.00", "20"),
        ("basic", 20, "50.00", "100"),
        ("business", 30, "150.00", "1000"),
        ("premium", 40, "400.00", "5000"),
    ):
        plans[key] = PlanFactory(key=key, name=key.title(), price=Money(price, "USD"), rank=rank)
        PlanEntitlementFactory(plan=plans[key], feature=storage, limit=Decimal(storage_gb))
        PlanEntitlementFactory(plan=plans[key], feature=transfer, limit=Decimal("500"))
    tier_entitlement = PlanEntitlementFactory(plan=plans["basic"], feature=tier, value="standard")
    PlanEntitlementFactory(plan=plans["business"], feature=versioning, enabled=True)
    draft = PlanFactory(key="draft", name="Draft", status="draft", rank=99)
    catalog_services.plan_version_draft_create(plan=draft)  # its version 2, a draft
    pack_a = TopUpPackFactory(
        key="extra-20-gb", name="Extra 20 GB", feature=storage, quantity=Decimal("20"),
        plans=[plans["basic"]],
    )  # fmt: skip
    pack_b = TopUpPackFactory(
        key="business-100-gb", name="Business 100 GB", feature=storage,
        quantity=Decimal("100"), plans=[plans["business"]],
    )  # fmt: skip
    spare_pack = TopUpPackFactory(key="spare-pack", feature=transfer, plans=[plans["premium"]])

    period_start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    period_start -= dt.timedelta(days=10)
    a = _owned(
        "acme", "Acme", start_plan=plans["starter"], plan=plans["basic"], pack=pack_a,
        period_start=period_start,
    )  # fmt: skip
    b = _owned(
        "globex", "Globex", start_plan=plans["basic"], plan=plans["business"], pack=pack_b,
        period_start=period_start,
    )  # fmt: skip
    # Basic's version 2, the same terms, published keeping Acme on version 1: support may move
    # Acme to it; the plan editor edits version 2's rows.
    basic_v2 = catalog_services.plan_version_draft_create(plan=plans["basic"])
    catalog_services.plan_version_publish(version=basic_v2, existing="keep")
    tier_entitlement = basic_v2.entitlements.get(feature=tier)

    # One row of every other model the admin shows.
    Group.objects.get_or_create(name=SUPPORT)
    interval = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)
    CrontabSchedule.objects.create(minute="0", hour="3")
    SolarSchedule.objects.create(
        event="sunrise", latitude=Decimal("48.85"), longitude=Decimal("2.35")
    )
    ClockedSchedule.objects.create(clocked_time=timezone.now() + dt.timedelta(days=1))
    PeriodicTask.objects.create(
        name="matrix task", task="billing.tasks.close_periods", interval=interval
    )
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example/in", active=False)
    WebhookDelivery.objects.create(
        endpoint=endpoint, event_type="usage.threshold_crossed", event_id="matrix-1", payload={}
    )
    seen = {"ip_address": "192.0.2.1", "user_agent": "matrix", "attempt_time": timezone.now()}
    AccessAttempt.objects.create(username="sam", failures_since_start=1, **seen)
    AccessLog.objects.create(username="sam", **seen)
    AccessFailureLog.objects.create(username="sam", **seen)
    _, key = api_key_create(name="matrix")
    return World(
        a=a,
        b=b,
        support=_staff("sam", SUPPORT),
        pm=_staff("priya", PRODUCT_MANAGERS),
        api_key=key,
        basic=plans["basic"],
        business=plans["business"],
        premium=plans["premium"],
        draft=draft,
        storage=storage,
        transfer=transfer,
        versioning=versioning,
        spare=spare,
        tier_entitlement=tier_entitlement,
        spare_pack=spare_pack,
    )


def _path_kwargs(key: str, w: World, own: Owned) -> dict:
    """The URL's parameters: `own`'s objects where the object belongs to a customer."""
    c = own.customer
    ent = w.tier_entitlement
    return {
        "catalog:plan_detail": {"key": w.basic.key},
        "catalog:entitlement_add": {"key": w.basic.key},
        "catalog:entitlement_row": {"key": w.basic.key, "pk": ent.pk},
        "catalog:entitlement_edit": {"key": w.basic.key, "pk": ent.pk},
        "catalog:entitlement_remove": {"key": w.basic.key, "pk": ent.pk},
        "catalog:plan_version": {"key": w.basic.key, "number": 1},
        "catalog:version_entitlement_add": {"key": w.draft.key, "number": 2},
        "catalog:version_draft_create": {"key": w.basic.key},
        "catalog:version_price": {"key": w.draft.key, "number": 2},
        "catalog:version_publish": {"key": w.draft.key, "number": 2},
        "catalog:version_duplicate": {"key": w.draft.key, "number": 1},
        "support:version_move": {"pk": c.pk},
        "api:plan-versions": {"plan_key": w.basic.key},
        "api:plan-version": {"plan_key": w.draft.key, "n": 2},
        "api:plan-version-impact": {"plan_key": w.draft.key, "n": 2},
        "api:plan-version-publish": {"plan_key": w.draft.key, "n": 2},
        "api:plan-version-duplicate": {"plan_key": w.draft.key, "n": 1},
        "support:customer": {"pk": c.pk},
        "support:change_plan": {"pk": c.pk},
        "support:grant_add": {"pk": c.pk},
        "support:grant_void": {"pk": c.pk, "grant_pk": own.grant.pk},
        "support:topup_sell": {"pk": c.pk},
        "support:override_add": {"pk": c.pk},
        "support:override_end": {"pk": c.pk, "override_pk": own.override.pk},
        "dashboard:topup_packs": {"feature_key": w.storage.key},
        "dashboard:topup_confirm": {"pack_key": own.pack.key},
        "dashboard:topup_receipt": {"key": own.purchase.idempotency_key},
        "dashboard:plan_change": {"plan_key": w.premium.key},
        "dashboard:plan_changed": {"number": own.proration_invoice.number},
        "dashboard:notification_detail": {"pk": own.notification.pk},
        "dashboard:invoice_detail": {"number": own.proration_invoice.number},
        "dashboard:invoice_pay": {"number": own.proration_invoice.number},
        "support:invoice_void": {"pk": c.pk, "number": own.proration_invoice.number},
        "support:usage_events": {"pk": c.pk},
        "support:usage_reverse": {"pk": c.pk, "event_pk": own.usage_event.pk},
        "api:usage-reversal": {
            "external_id": c.external_id,
            "event_id": own.usage_event.event_id,
        },
        "dashboard:portal_enter": {"token": "not-a-token"},
        "billing:invoice_detail": {"number": own.proration_invoice.number},
        "api:customer": {"external_id": c.external_id},
        "api:entitlements": {"external_id": c.external_id},
        "api:entitlement": {"external_id": c.external_id, "feature_key": w.transfer.key},
        "api:consume": {"external_id": c.external_id, "feature_key": w.transfer.key},
        "api:reservations": {"external_id": c.external_id, "feature_key": w.transfer.key},
        "api:reservation": {
            "external_id": c.external_id,
            "feature_key": w.transfer.key,
            "reservation_id": own.reservation.reservation_id,
        },
        "api:reservation-commit": {
            "external_id": c.external_id,
            "feature_key": w.transfer.key,
            "reservation_id": own.reservation.reservation_id,
        },
        "api:usage-buckets": {"external_id": c.external_id, "feature_key": w.transfer.key},
        "api:overrides": {"external_id": c.external_id},
        "api:override": {"external_id": c.external_id, "pk": own.override.pk},
        "api:grants": {"external_id": c.external_id},
        "api:grant": {"external_id": c.external_id, "pk": own.grant.pk},
        "api:subscription": {"external_id": c.external_id},
        "api:topups": {"external_id": c.external_id},
        "api:invoices": {"external_id": c.external_id},
        "api:invoice": {"external_id": c.external_id, "number": own.proration_invoice.number},
        "api:portal-sessions": {"external_id": c.external_id},
        "api:feature": {"feature_key": w.spare.key},
        "api:plan": {"plan_key": w.draft.key},
        "api:topup-pack": {"pack_key": w.spare_pack.key},
        "admin:auth_user_password_change": {"id": own.user.pk},
        "admin:view_on_site": {
            "content_type_id": _content_type_id(Customer),
            "object_id": str(c.pk),
        },
    }.get(key, {})


def _content_type_id(model) -> str:
    from django.contrib.contenttypes.models import ContentType

    return str(ContentType.objects.get_for_model(model).pk)


def _body(key: str, method: str, w: World, own: Owned) -> dict:
    """A valid request body: the allowed role's request succeeds, so a refusal is access."""
    c = own.customer
    pe = f"e{w.tier_entitlement.pk}"
    return {
        ("logout", "POST"): {},
        ("catalog:entitlement_add", "POST"): {
            "add-feature": w.spare.key,
            "add-limit": "1000",
            "add-reset": "billing_period",
            "add-enforcement": "hard",
            "add-notify_at": "80, 100",
        },
        ("catalog:entitlement_edit", "POST"): {f"{pe}-value": "gold"},
        ("catalog:entitlement_remove", "POST"): {},
        ("catalog:version_entitlement_add", "POST"): {
            "add-feature": w.spare.key,
            "add-limit": "1000",
            "add-reset": "billing_period",
            "add-enforcement": "hard",
            "add-notify_at": "80, 100",
        },
        ("catalog:version_draft_create", "POST"): {},
        ("catalog:version_price", "POST"): {"amount": "70"},
        ("catalog:version_publish", "POST"): {"existing": "keep"},
        ("catalog:version_duplicate", "POST"): {"key": "draft-copy", "name": "Draft copy"},
        ("support:version_move", "POST"): {},
        ("api:plan-version", "PATCH"): {"price": {"amount": "70.00", "currency": "USD"}},
        ("api:plan-version-publish", "POST"): {"existing": "keep"},
        ("api:plan-version-duplicate", "POST"): {"key": "draft-copy", "name": "Draft copy"},
        ("support:change_plan", "POST"): {"plan": w.premium.key},
        ("support:grant_add", "POST"): {
            "grant-feature": w.transfer.key,
            "grant-quantity": "5",
            "grant-reason": "Ticket 42",
        },
        ("support:grant_void", "POST"): {},
        ("support:topup_sell", "POST"): {
            "topup-pack": own.pack.key,
            "topup-idempotency_key": "support-sale-1",
        },
        ("support:override_add", "POST"): {
            "ov-feature": w.versioning.key,
            "ov-enabled": "on",
            "ov-reason": "Pilot",
        },
        ("support:override_end", "POST"): {},
        ("support:invoice_void", "POST"): {"reason": "Matrix"},
        ("support:usage_reverse", "POST"): {"reason": "Matrix"},
        ("api:usage-reversal", "POST"): {"reason": "Matrix"},
        ("dashboard:topup_confirm", "POST"): {"idempotency_key": "dashboard-buy-1"},
        ("dashboard:plan_change", "POST"): {"from_plan": w.basic.key},
        ("api:customers", "POST"): {"external_id": "initech", "name": "Initech"},
        ("api:customer", "PUT"): {
            "external_id": c.external_id,
            "name": "Renamed",
            "email": c.email,
            "currency": "USD",
        },
        ("api:customer", "PATCH"): {"name": "Renamed"},
        ("api:consume", "POST"): {"quantity": "1", "event_id": "matrix-consume-1"},
        ("api:reservations", "POST"): {"reservation_id": "matrix-hold-1", "quantity": "1"},
        ("api:reservation-commit", "POST"): {"quantity": "0.5"},
        ("api:usage", "POST"): {
            "events": [
                {
                    "event_id": "matrix-batch-1",
                    "customer": c.external_id,
                    "feature": w.transfer.key,
                    "quantity": "2",
                }
            ]
        },
        ("api:overrides", "POST"): {"feature": w.storage.key, "limit": "2000", "reason": "Deal"},
        ("api:override", "DELETE"): {},
        ("api:grants", "POST"): {"feature": w.transfer.key, "quantity": "10", "reason": "Gift"},
        ("api:grant", "DELETE"): {},
        ("api:subscription", "POST"): {"plan": w.premium.key},
        ("api:subscription", "DELETE"): {},
        ("api:topups", "POST"): {"pack": own.pack.key, "idempotency_key": "api-buy-1"},
        ("api:features", "POST"): {"key": "seats", "name": "Seats", "kind": "config"},
        ("api:feature", "PUT"): {
            "key": w.spare.key,
            "name": "Requests",
            "kind": "metered",
            "unit": "calls",
        },
        ("api:feature", "PATCH"): {"name": "Requests"},
        ("api:feature", "DELETE"): {},
        ("api:plans", "POST"): {
            "key": "team",
            "name": "Team",
            "price": {"amount": "90.00", "currency": "USD"},
            "interval": "month",
            "status": "draft",
            "rank": 25,
            "entitlements": [],
        },
        ("api:plan", "PUT"): {
            "key": w.draft.key,
            "name": "Draft 2",
            "price": {"amount": "60.00", "currency": "USD"},
            "interval": "month",
            "status": "draft",
            "rank": 99,
            "entitlements": [],
        },
        ("api:plan", "PATCH"): {"name": "Draft 2"},
        ("api:plan", "DELETE"): {},
        ("api:topup-packs", "POST"): {
            "key": "extra-5",
            "name": "Extra 5",
            "feature": w.transfer.key,
            "quantity": "5",
            "price": {"amount": "5.00", "currency": "USD"},
        },
        ("api:topup-pack", "PUT"): {
            "key": w.spare_pack.key,
            "name": "Spare",
            "feature": w.transfer.key,
            "quantity": "7",
            "price": {"amount": "7.00", "currency": "USD"},
        },
        ("api:topup-pack", "PATCH"): {"name": "Spare 2"},
        ("api:topup-pack", "DELETE"): {},
    }.get((key, method))


# --- requests -----------------------------------------------------------------------------------


# One request handler for all the clients: loading the middleware (whitenoise indexes the
# static files) for each of the matrix's thousand clients would be most of its time.
_HANDLER = ClientHandler(enforce_csrf_checks=True)


def _client(role: str, w: World) -> Client:
    """A client as `role`, with a CSRF cookie and the matching header on every request."""
    client = Client(enforce_csrf_checks=True)
    client.handler = _HANDLER
    user = {
        "customer_a": w.a.user,
        "customer_b": w.b.user,
        "support": w.support,
        "pm": w.pm,
    }.get(role)
    if user is not None:
        client.force_login(user)
    token = _get_new_csrf_string()
    client.cookies["csrftoken"] = token
    client.defaults["HTTP_X_CSRFTOKEN"] = token
    if role == "api_key":
        client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {w.api_key}"
    return client


def _send(client: Client, method: str, url: str, body, *, api: bool):
    if method == "GET":
        return client.get(url)
    if api:
        return client.generic(method, url, data=_json(body), content_type="application/json")
    return client.post(url, body or {})


def _json(body) -> str:
    import json

    return json.dumps(body or {})


# The database as far as an action could change it (the domain's tables; not sessions,
# history rows or the API key's last use).
_FINGERPRINTED = [
    model
    for label in ("catalog", "customers", "billing", "dashboard")
    for model in apps.get_app_config(label).get_models()
    if not model.__name__.startswith("Historical")
]


def _fingerprint() -> dict:
    return {
        model.__name__: list(model.objects.order_by("pk").values_list()) for model in _FINGERPRINTED
    }


def _check(expected, response, changed: bool, *, api: bool) -> str | None:
    """What is wrong with `response` (None when it is what the table says)."""
    status = response.status_code
    location = response.get("Location", "")
    if isinstance(expected, Done):
        if status != expected.status:
            return f"expected {expected.status} (done), got {status} {location}"
        return None if changed else f"{status} but the database did not change"
    if changed:
        return f"expected {expected}, got {status} AND THE DATABASE CHANGED"
    if expected == LOGIN:
        ok = status == 302 and location.startswith(reverse("login"))
    elif expected == ADMIN_LOGIN:
        ok = status == 302 and location.startswith(reverse("admin:login"))
    elif expected == REDIRECT:
        ok = status in (301, 302) and not location.startswith(
            (reverse("login"), reverse("admin:login"))
        )
    else:
        ok = status == expected
    if ok and api and status == 401:
        ok = response.json()["error"]["code"] == "unauthenticated"
    return None if ok else f"expected {expected}, got {status} {location}".rstrip()


def _run_row(w: World, key: str, method: str, row: tuple, url_for, *, api: bool) -> list[str]:
    """Requests `url_for(role)` as every role (the roles that carry the action out last, so
    the refusals meet the world as it was) and returns the mismatches."""
    problems = []
    order = sorted(range(len(ROLES)), key=lambda i: isinstance(row[i], Done))
    for i in order:
        role, expected = ROLES[i], row[i]
        url = url_for(role)
        # GETs are not fingerprinted: they are many, and the writes are what can go wrong.
        before = _fingerprint() if method != "GET" else None
        response = _send(_client(role, w), method, url, _body(key, method, w, w.a), api=api)
        changed = method != "GET" and _fingerprint() != before
        problem = _check(expected, response, changed, api=api)
        if problem:
            problems.append(f"{method} {url} as {role}: {problem}")
    return problems


PAGE_CASES = [(key, method) for key in ROUTES for method in PAGES.get(key, {})]
API_CASES = [(key, method) for key in ROUTES for method in API.get(key, {})]


@pytest.mark.parametrize(("key", "method"), PAGE_CASES)
def test_page(world, key, method):
    url = _url_of(key, _path_kwargs(key, world, world.a))
    problems = _run_row(world, key, method, PAGES[key][method], lambda role: url, api=False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("key", "method"), API_CASES)
def test_api(world, key, method):
    url = _url_of(key, _path_kwargs(key, world, world.a))
    problems = _run_row(world, key, method, API[key][method], lambda role: url, api=True)
    assert not problems, "\n".join(problems)


def test_a_customer_gets_404_for_another_customers_objects(world):
    """The table's B column turned round: A asks for B's objects, by every URL that names a
    customer's own object, and gets 404 and changes nothing."""
    problems = []
    for key, methods in PAGES.items():
        for method, row in methods.items():
            if row[ROLES.index("customer_b")] != 404:
                continue
            url = _url_of(key, _path_kwargs(key, world, world.b))
            before = _fingerprint()
            response = _send(
                _client("customer_a", world), method, url, _body(key, method, world, world.b),
                api=False,
            )  # fmt: skip
            problem = _check(404, response, _fingerprint() != before, api=False)
            if problem:
                problems.append(f"{method} {url} as customer_a: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("key", "kwargs_of"),
    [
        ("support:grant_void", lambda w: {"pk": w.b.customer.pk, "grant_pk": w.a.grant.pk}),
        (
            "support:override_end",
            lambda w: {"pk": w.b.customer.pk, "override_pk": w.a.override.pk},
        ),
        (
            "catalog:entitlement_edit",
            lambda w: {"key": w.business.key, "pk": w.tier_entitlement.pk},
        ),
        (
            "catalog:entitlement_remove",
            lambda w: {"key": w.business.key, "pk": w.tier_entitlement.pk},
        ),
    ],
)
def test_a_nested_object_must_belong_to_its_parent(world, key, kwargs_of):
    """Staff act on an object through its parent's URL; a mismatched pair is a 404."""
    role = "support" if key.startswith("support:") else "pm"
    url = reverse(key, kwargs=kwargs_of(world))
    before = _fingerprint()
    response = _send(
        _client(role, world), "POST", url, _body(key, "POST", world, world.a), api=False
    )
    assert response.status_code == 404
    assert _fingerprint() == before


# --- the admin ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [k for k in ROUTES if k in ADMIN_SITE])
def test_admin_site(world, key):
    url = _url_of(key, _path_kwargs(key, world, world.a))
    problems = []
    for method, row in ADMIN_SITE[key].items():
        problems += _run_row(world, key, method, row, lambda role: url, api=False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("app_label", sorted(ADMIN_APPS))
def test_admin_app_index(world, app_label):
    support, pm = ADMIN_APPS[app_label]
    row = (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, support, pm, ADMIN_LOGIN)
    url = reverse("admin:app_list", kwargs={"app_label": app_label})
    problems = _run_row(world, "admin:app_list", "GET", row, lambda role: url, api=False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("label", sorted(ADMIN_MODELS))
def test_admin_model(world, label):
    """Changelist, add, change, history, delete (its confirmation page) and one historical
    version of a real row, as every role; GET only, so nothing is changed."""
    app, model_name = label.split(".")
    model = apps.get_model(app, model_name)
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"the world has no {label}: add one to the fixture"
    support, pm = ADMIN_MODELS[label]
    problems = []
    for i, view in enumerate(ADMIN_MODEL_VIEWS):
        if support[i] == "-":
            continue
        name = f"admin:{app}_{model_name}_{view}"
        if view in ("changelist", "add"):
            url = reverse(name)
        elif view == "simple_history":
            version = obj.history.order_by("history_id").first()
            url = reverse(name, args=[obj.pk, version.history_id])
        else:
            url = reverse(name, args=[obj.pk])
        row = (ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, support[i], pm[i], ADMIN_LOGIN)
        problems += _run_row(world, name, "GET", row, lambda role, url=url: url, api=False)
    assert not problems, "\n".join(problems)
