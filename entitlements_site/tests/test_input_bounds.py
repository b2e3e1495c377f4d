"""The edges of every input (issue 16, DESIGN.md "Numbers, dates and the embedded database").

A table of boundary values x every path a value can come in by (API, plan editor, support
forms, admin), on whichever database the suite runs on. For each refused value: a 4xx with the
error JSON naming the field, or the form again with its error (200, no redirect); nothing
stored; and every read of that plan and customer still answers 2xx. Values at the edge are
accepted and read back as exactly the same decimal string.

One world is built per module (inside a transaction rolled back at the end); each test runs in
a savepoint of it, so hundreds of cases stay fast.
"""

import datetime as dt
import itertools
import json
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client, override_settings
from django.utils import timezone
from djmoney.money import Money
from rest_framework.test import APIClient

from billing.models import Invoice
from billing.services.subscriptions import subscription_create
from catalog.models import Feature, Plan, PlanEntitlement, TopUpPack
from catalog.tests.factories import (
    FeatureFactory,
    PlanEntitlementFactory,
    PlanFactory,
    TopUpPackFactory,
)
from core.bounds import INSTANT_RULE
from core.roles import PRODUCT_MANAGERS, SUPPORT
from core.services import api_key_create
from customers import services as customer_services
from customers.models import Customer, EntitlementOverride, Grant, Reservation, UsageEvent
from support.tests.conftest import report, user_in

ACME = "acme-001"
_ids = itertools.count(1)


@dataclass
class World:
    basic: Plan
    storage_ent: PlanEntitlement
    transfer_ent: PlanEntitlement
    acme: Customer
    api_key: str
    users: dict = field(default_factory=dict)
    ids: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    """Basic ($50/month): Storage 100 GB (hard), Data transfer 200 GB (soft, $0.10 per GB
    over); an "API calls" feature on no plan (for "add feature"); the "Extra 20 GB" pack.
    Acme ("acme-001") on Basic with 85 GB stored and its first invoice; one login per role."""
    fast_passwords = override_settings(
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]
    )
    with django_db_blocker.unblock(), fast_passwords, transaction.atomic():
        storage = FeatureFactory(key="storage", name="Storage", latest=True)
        transfer = FeatureFactory(key="data-transfer", name="Data transfer", metered=True)
        api_calls = FeatureFactory(key="api-calls", name="API calls", metered=True)
        basic = PlanFactory(key="basic", name="Basic", price=Money("50.00", "USD"), rank=20)
        storage_ent = PlanEntitlementFactory(plan=basic, feature=storage, limit=Decimal("100"))
        transfer_ent = PlanEntitlementFactory(
            plan=basic, feature=transfer, limit=Decimal("200"), soft=True
        )
        pack = TopUpPackFactory(
            key="extra-20-gb", name="Extra 20 GB", feature=storage, quantity=Decimal("20")
        )
        acme = customer_services.customer_create(
            external_id=ACME, name="Acme Corporation", email="billing@acme.example"
        )
        subscription_create(customer=acme, plan=basic)
        report(acme, "storage", "85")
        casey = user_in("casey")
        customer_services.customer_user_link(user=casey, customer=acme)
        admin = get_user_model().objects.create_superuser("root", "root@example.test", "x")
        yield World(
            basic=basic,
            storage_ent=storage_ent,
            transfer_ent=transfer_ent,
            acme=acme,
            api_key=api_key_create(name="bounds")[1],
            users={
                "pm": user_in("priya", PRODUCT_MANAGERS, is_staff=True),
                "support": user_in("sam", SUPPORT, is_staff=True),
                "customer": casey,
                "admin": admin,
            },
            ids={
                "storage": storage.pk,
                "transfer": transfer.pk,
                "api-calls": api_calls.pk,
                "pack": pack.pk,
                "invoice": Invoice.objects.get(customer=acme).number,
            },
        )
        transaction.set_rollback(True)


class Clients:
    """One client per role, made on first use (a login costs a session row)."""

    def __init__(self, world: World):
        self.world, self._made = world, {}

    def __getattr__(self, role: str):
        if role.startswith("_"):
            raise AttributeError(role)
        if role not in self._made:
            if role == "api":
                client = APIClient()
                client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.world.api_key}")
            else:
                client = Client()
                client.force_login(self.world.users[role])
            self._made[role] = client
        return self._made[role]


@pytest.fixture
def c(db, world) -> Clients:
    return Clients(world)


# --- reads: every page and answer that loads the plan or the customer -------------------------

READS = {
    "api plans": ("api", lambda w: "/api/v1/plans"),
    "api plan": ("api", lambda w: "/api/v1/plans/basic"),
    "api entitlements": ("api", lambda w: f"/api/v1/customers/{ACME}/entitlements"),
    "api storage": ("api", lambda w: f"/api/v1/customers/{ACME}/entitlements/storage"),
    "api transfer": ("api", lambda w: f"/api/v1/customers/{ACME}/entitlements/data-transfer"),
    "api invoices": ("api", lambda w: f"/api/v1/customers/{ACME}/invoices"),
    "api packs": ("api", lambda w: "/api/v1/topup-packs"),
    "support page": ("support", lambda w: f"/support/customers/{w.acme.pk}/"),
    "dashboard": ("customer", lambda w: "/dashboard/"),
    "dashboard invoices": ("customer", lambda w: "/dashboard/invoices/"),
    "invoice page": ("customer", lambda w: f"/billing/invoices/{w.ids['invoice']}/"),
    "plan editor": ("pm", lambda w: "/catalog/plans/basic/"),
}


def assert_reads_answer(c: Clients, world: World, reads, admin_changelist: str = "") -> None:
    for name in [*reads, "admin"] if admin_changelist else reads:
        role, url = ("admin", admin_changelist) if name == "admin" else READS[name]
        url = url(world) if callable(url) else url
        response = getattr(c, role).get(url)
        assert response.status_code == 200, f"{name} ({url}) answered {response.status_code}"


# --- the paths: how a value is submitted, which rows it may touch, how it reads back ----------


def _money(amount) -> dict:
    return {"amount": amount, "currency": "USD"}


def _plan_entitlements(c: Clients, **changes) -> list[dict]:
    """Basic's entitlements as the API shows them, with `changes[feature]` merged in."""
    entitlements = c.api.get("/api/v1/plans/basic").json()["entitlements"]
    for item in entitlements:
        item.update(changes.get(item["feature"], {}))
    return entitlements


def _plan_entitlement_of(c: Clients, feature: str) -> dict:
    entitlements = c.api.get("/api/v1/plans/basic").json()["entitlements"]
    return next(item for item in entitlements if item["feature"] == feature)


def _editor_post(c, world, ent, **values):
    prefix = f"e{ent.pk}"
    data = {f"{prefix}-reset": "billing_period", f"{prefix}-notify_at": "80, 100"}
    data[f"{prefix}-enforcement"] = ent.enforcement
    data[f"{prefix}-limit"] = str(ent.limit)
    data[f"{prefix}-overage_price"] = "0.10" if ent.overage_price is not None else ""
    data.update({f"{prefix}-{k}": v for k, v in values.items()})
    # A lower limit is saved once confirmed (the editor first says whom it reaches).
    data["confirm_lower"] = data[f"{prefix}-limit"]
    return c.pm.post(f"/catalog/plans/basic/entitlements/{ent.pk}/edit/", data)


def _admin_entitlement_post(c, world, ent, **values):
    data = {
        "plan": world.basic.pk,
        "feature": ent.feature_id,
        "enabled": "on",
        "limit": str(ent.limit),
        "reset": "billing_period",
        "enforcement": ent.enforcement,
        "overage_price_0": "0.10" if ent.overage_price is not None else "",
        "overage_price_1": "USD",
        "notify_at": "[80, 100]",
        "value": "",
        **values,
    }
    return c.admin.post(f"/admin/catalog/planentitlement/{ent.pk}/change/", data)


def _admin_pack_post(c, world, **values):
    data = {
        "key": f"edge-{next(_ids)}",
        "name": "Edge pack",
        "feature": world.ids["storage"],
        "quantity": "10",
        "price_0": "5.00",
        "price_1": "USD",
        "expiry": "never",
        "active": "on",
        **values,
    }
    return c.admin.post("/admin/catalog/topuppack/add/", data)


def _split(when: dt.datetime | None, name: str) -> dict:
    if when is None:
        return {f"{name}_0": "", f"{name}_1": ""}
    return {f"{name}_0": when.strftime("%Y-%m-%d"), f"{name}_1": when.strftime("%H:%M:%S")}


def _admin_grant_post(c, world, *, expires_at=None, **values):
    data = {
        "customer": world.acme.pk,
        "feature": world.ids["transfer"],
        "quantity": "10",
        "source": "manual",
        "reason": "edge",
        **_split(timezone.now(), "effective_at"),
        **_split(expires_at, "expires_at"),
        **values,
    }
    return c.admin.post("/admin/customers/grant/add/", data)


def _admin_override_post(c, world, *, starts_at=None, ends_at=None, **values):
    data = {
        "customer": world.acme.pk,
        "feature": world.ids["transfer"],
        "enabled": "on",
        "limit": "10",
        "reset": "billing_period",
        "enforcement": "soft",
        "overage_price_0": "0.10",
        "overage_price_1": "USD",
        "notify_at": "[80, 100]",
        "value": "",
        "reason": "edge deal",
        **_split(starts_at, "starts_at"),
        **_split(ends_at, "ends_at"),
        **values,
    }
    return c.admin.post("/admin/customers/entitlementoverride/add/", data)


def _support_override_post(c, world, *, starts_at="", ends_at="", **values):
    data = {
        "ov-feature": "data-transfer",
        "ov-reason": "edge deal",
        "ov-limit": "10",
        "ov-reset": "billing_period",
        "ov-enforcement": "soft",
        "ov-overage_price": "0.10",
        "ov-notify_at": "80, 100",
        "ov-starts_at": starts_at,
        "ov-ends_at": ends_at,
        **{f"ov-{k}": v for k, v in values.items()},
    }
    return c.support.post(f"/support/customers/{world.acme.pk}/overrides/", data)


def _support_grant_post(c, world, *, expires_at="", **values):
    data = {
        "grant-feature": "data-transfer",
        "grant-quantity": "10",
        "grant-reason": "edge",
        "grant-expires_at": expires_at,
        **{f"grant-{k}": v for k, v in values.items()},
    }
    return c.support.post(f"/support/customers/{world.acme.pk}/grants/", data)


def _rows(model, *fields):
    return lambda: sorted(map(str, model.objects.values_list(*fields)))


def _pack_read(amount: bool = False):
    """The newest pack as GET /api/v1/topup-packs/<key> answers it (quantity, or price)."""

    def read(c, world, response):
        key = TopUpPack.objects.order_by("-pk").values_list("key", flat=True)[0]
        pack = c.api.get(f"/api/v1/topup-packs/{key}").json()
        return pack["price"]["amount"] if amount else pack["quantity"]

    return read


def _grant_read(c, world, response):
    """The newest grant's quantity as GET /api/v1/customers/<id>/grants/<pk> answers it."""
    pk = Grant.objects.order_by("-pk").values_list("pk", flat=True)[0]
    return c.api.get(f"/api/v1/customers/{ACME}/grants/{pk}").json()["quantity"]


@dataclass(frozen=True)
class Path:
    """One way a decimal comes in. `submit(c, world, value)` answers the response; `kind` is
    api (error JSON), batch (per-event rejection) or form (the form again with its error)."""

    name: str
    kind: str
    field: str
    submit: object
    rows: object
    changelist: str
    read_back: object  # (c, world, response) -> the decimal as a GET answers it
    edges: tuple = ("999999999999999", "99999999999.9999", "0.0001")
    nullable: bool = False


def _api_plan_create(c, world, value):
    body = {"key": f"edge-{next(_ids)}", "name": "Edge", "price": _money(value)}
    return c.api.post("/api/v1/plans", body, format="json")


def _consume(c, world, value):
    body = {"quantity": value, "event_id": f"edge-{next(_ids)}"}
    url = f"/api/v1/customers/{ACME}/entitlements/data-transfer/consume"
    return c.api.post(url, body, format="json")


HOLDS = f"/api/v1/customers/{ACME}/entitlements/data-transfer/reservations"


def _hold(c, world, value):
    body = {"quantity": value, "reservation_id": f"edge-{next(_ids)}", "ttl_seconds": 60}
    return c.api.post(HOLDS, body, format="json")


def _held_read(c, world, response):
    reservation_id = response.json()["reservation"]["id"]
    return c.api.get(f"{HOLDS}/{reservation_id}").json()["reservation"]["quantity"]


def _commit(c, world, value):
    """A commit of `value` from a hold of the most a commit may take: the bound's ceiling."""
    reservation_id = f"edge-{next(_ids)}"
    held = {"quantity": "99999999999.9999", "reservation_id": reservation_id}
    assert c.api.post(HOLDS, held, format="json").status_code == 201
    commit = f"{HOLDS}/{reservation_id}/commit"
    return c.api.post(commit, {"quantity": value}, format="json")


def _committed_read(c, world, response):
    return response.json()["reservation"]["committed_quantity"]


def _batch(c, world, value):
    event = {"event_id": f"edge-{next(_ids)}", "customer": ACME, "feature": "data-transfer"}
    return c.api.post("/api/v1/usage", {"events": [{**event, "quantity": value}]}, format="json")


def _usage_read(c, world, response):
    return c.api.get(f"/api/v1/customers/{ACME}/entitlements/data-transfer").json()["usage"]


PRICE_EDGES = ("9999999999.99", "0.01")
RATE_EDGES = ("99999999.9999", "0.0001")
PATHS = [
    Path(
        "api plan create: price",
        "api",
        "price",
        _api_plan_create,
        _rows(Plan, "key", "price"),
        "/admin/catalog/plan/",
        lambda c, w, r: c.api.get(f"/api/v1/plans/{r.json()['key']}").json()["price"]["amount"],
        edges=PRICE_EDGES,
    ),
    Path(
        "api plan update: entitlement limit",
        "api",
        "limit",
        lambda c, w, v: c.api.patch(
            "/api/v1/plans/basic",
            {"entitlements": _plan_entitlements(c, storage={"limit": v})},
            format="json",
        ),
        _rows(PlanEntitlement, "feature__key", "limit", "overage_price"),
        "/admin/catalog/planentitlement/",
        lambda c, w, r: _plan_entitlement_of(c, "storage")["limit"],
        nullable=True,
    ),
    Path(
        "api plan update: overage price",
        "api",
        "overage_price",
        lambda c, w, v: c.api.patch(
            "/api/v1/plans/basic",
            {
                "entitlements": _plan_entitlements(
                    c, **{"data-transfer": {"overage_price": _money(v)}}
                )
            },
            format="json",
        ),
        _rows(PlanEntitlement, "feature__key", "limit", "overage_price"),
        "/admin/catalog/planentitlement/",
        lambda c, w, r: _plan_entitlement_of(c, "data-transfer")["overage_price"]["amount"],
        edges=RATE_EDGES,
    ),
]
PATHS += [
    Path(
        "api top-up pack create: quantity",
        "api",
        "quantity",
        lambda c, w, v: c.api.post(
            "/api/v1/topup-packs",
            {
                "key": f"edge-{next(_ids)}",
                "name": "Edge",
                "feature": "storage",
                "quantity": v,
                "price": _money("5.00"),
            },
            format="json",
        ),
        _rows(TopUpPack, "key", "quantity", "price"),
        "/admin/catalog/topuppack/",
        lambda c, w, r: c.api.get(f"/api/v1/topup-packs/{r.json()['key']}").json()["quantity"],
    ),
    Path(
        "api top-up pack update: quantity",
        "api",
        "quantity",
        lambda c, w, v: c.api.patch(
            "/api/v1/topup-packs/extra-20-gb", {"quantity": v}, format="json"
        ),
        _rows(TopUpPack, "key", "quantity", "price"),
        "/admin/catalog/topuppack/",
        lambda c, w, r: c.api.get("/api/v1/topup-packs/extra-20-gb").json()["quantity"],
    ),
    Path(
        "api top-up pack create: price",
        "api",
        "price",
        lambda c, w, v: c.api.post(
            "/api/v1/topup-packs",
            {
                "key": f"edge-{next(_ids)}",
                "name": "Edge",
                "feature": "storage",
                "quantity": "5",
                "price": _money(v),
            },
            format="json",
        ),
        _rows(TopUpPack, "key", "quantity", "price"),
        "/admin/catalog/topuppack/",
        lambda c, w, r: c.api.get(f"/api/v1/topup-packs/{r.json()['key']}").json()["price"][
            "amount"
        ],
        edges=PRICE_EDGES,
    ),
    Path(
        "api grant: quantity",
        "api",
        "quantity",
        lambda c, w, v: c.api.post(
            f"/api/v1/customers/{ACME}/grants",
            {"feature": "data-transfer", "quantity": v, "reason": "edge"},
            format="json",
        ),
        _rows(Grant, "feature__key", "quantity"),
        "/admin/customers/grant/",
        lambda c, w, r: c.api.get(f"/api/v1/customers/{ACME}/grants/{r.json()['id']}").json()[
            "quantity"
        ],
    ),
    Path(
        "api override: limit",
        "api",
        "limit",
        lambda c, w, v: c.api.post(
            f"/api/v1/customers/{ACME}/overrides",
            {"feature": "data-transfer", "limit": v, "reason": "edge deal"},
            format="json",
        ),
        _rows(EntitlementOverride, "feature__key", "limit", "overage_price"),
        "/admin/customers/entitlementoverride/",
        lambda c, w, r: c.api.get(f"/api/v1/customers/{ACME}/entitlements/data-transfer").json()[
            "limit"
        ],
        nullable=True,
    ),
    Path(
        "api override: overage price",
        "api",
        "overage_price",
        lambda c, w, v: c.api.post(
            f"/api/v1/customers/{ACME}/overrides",
            {
                "feature": "data-transfer",
                "limit": "10",
                "enforcement": "soft",
                "overage_price": _money(v),
                "reason": "edge deal",
            },
            format="json",
        ),
        _rows(EntitlementOverride, "feature__key", "limit", "overage_price"),
        "/admin/customers/entitlementoverride/",
        lambda c, w, r: c.api.get(f"/api/v1/customers/{ACME}/overrides/{r.json()['id']}").json()[
            "overage_price"
        ]["amount"],
        edges=RATE_EDGES,
        nullable=True,
    ),
    Path(
        "api consume: quantity",
        "api",
        "quantity",
        _consume,
        _rows(UsageEvent, "event_id", "quantity"),
        "/admin/customers/usageevent/",
        _usage_read,
    ),
    Path(
        "api reservation hold: quantity",
        "api",
        "quantity",
        _hold,
        _rows(Reservation, "reservation_id", "quantity"),
        "/admin/customers/reservation/",
        _held_read,
    ),
    Path(
        "api reservation commit: quantity",
        "api",
        "quantity",
        _commit,
        _rows(UsageEvent, "event_id", "quantity"),
        "/admin/customers/reservation/",
        _committed_read,
        edges=("99999999999.9999", "0.0001"),
    ),
    Path(
        "api usage batch: quantity",
        "batch",
        "quantity",
        _batch,
        _rows(UsageEvent, "event_id", "quantity"),
        "/admin/customers/usageevent/",
        _usage_read,
    ),
    Path(
        "plan editor: entitlement limit",
        "form",
        "limit",
        lambda c, w, v: _editor_post(c, w, w.storage_ent, limit=v),
        _rows(PlanEntitlement, "feature__key", "limit", "overage_price"),
        "/admin/catalog/planentitlement/",
        lambda c, w, r: _plan_entitlement_of(c, "storage")["limit"],
        nullable=True,
    ),
    Path(
        "plan editor: overage price",
        "form",
        "overage_price",
        lambda c, w, v: _editor_post(c, w, w.transfer_ent, overage_price=v),
        _rows(PlanEntitlement, "feature__key", "limit", "overage_price"),
        "/admin/catalog/planentitlement/",
        lambda c, w, r: _plan_entitlement_of(c, "data-transfer")["overage_price"]["amount"],
        edges=RATE_EDGES,
        nullable=True,
    ),
    Path(
        "plan editor: add a feature",
        "form",
        "limit",
        lambda c, w, v: c.pm.post(
            "/catalog/plans/basic/entitlements/add/",
            {
                "add-feature": "api-calls",
                "add-limit": v,
                "add-reset": "billing_period",
                "add-enforcement": "hard",
                "add-notify_at": "80, 100",
            },
        ),
        _rows(PlanEntitlement, "feature__key", "limit", "overage_price"),
        "/admin/catalog/planentitlement/",
        lambda c, w, r: _plan_entitlement_of(c, "api-calls")["limit"],
        nullable=True,
    ),
    Path(
        "support form: grant quantity",
        "form",
        "quantity",
        lambda c, w, v: _support_grant_post(c, w, quantity=v),
        _rows(Grant, "feature__key", "quantity"),
        "/admin/customers/grant/",
        _grant_read,
    ),
    Path(
        "support form: override limit",
        "form",
        "limit",
        lambda c, w, v: _support_override_post(c, w, limit=v),
        _rows(EntitlementOverride, "feature__key", "limit", "overage_price"),
        "/admin/customers/entitlementoverride/",
        lambda c, w, r: c.api.get(f"/api/v1/customers/{ACME}/entitlements/data-transfer").json()[
            "limit"
        ],
        nullable=True,
    ),
    Path(
        "admin: plan entitlement limit",
        "form",
        "limit",
        lambda c, w, v: _admin_entitlement_post(c, w, w.storage_ent, limit=v),
        _rows(PlanEntitlement, "feature__key", "limit", "overage_price"),
        "/admin/catalog/planentitlement/",
        lambda c, w, r: _plan_entitlement_of(c, "storage")["limit"],
        nullable=True,
    ),
    Path(
        "admin: plan entitlement overage price",
        "form",
        "overage_price",
        lambda c, w, v: _admin_entitlement_post(c, w, w.transfer_ent, overage_price_0=v),
        _rows(PlanEntitlement, "feature__key", "limit", "overage_price"),
        "/admin/catalog/planentitlement/",
        lambda c, w, r: _plan_entitlement_of(c, "data-transfer")["overage_price"]["amount"],
        edges=RATE_EDGES,
        nullable=True,
    ),
    Path(
        "admin: top-up pack quantity",
        "form",
        "quantity",
        lambda c, w, v: _admin_pack_post(c, w, quantity=v),
        _rows(TopUpPack, "key", "quantity", "price"),
        "/admin/catalog/topuppack/",
        _pack_read(),
    ),
    Path(
        "admin: top-up pack price",
        "form",
        "price",
        lambda c, w, v: _admin_pack_post(c, w, price_0=v),
        _rows(TopUpPack, "key", "quantity", "price"),
        "/admin/catalog/topuppack/",
        _pack_read(amount=True),
        edges=PRICE_EDGES,
    ),
    Path(
        "admin: grant quantity",
        "form",
        "quantity",
        lambda c, w, v: _admin_grant_post(c, w, quantity=v),
        _rows(Grant, "feature__key", "quantity"),
        "/admin/customers/grant/",
        _grant_read,
    ),
    Path(
        "admin: override limit",
        "form",
        "limit",
        lambda c, w, v: _admin_override_post(c, w, limit=v),
        _rows(EntitlementOverride, "feature__key", "limit", "overage_price"),
        "/admin/customers/entitlementoverride/",
        lambda c, w, r: c.api.get(f"/api/v1/customers/{ACME}/entitlements/data-transfer").json()[
            "limit"
        ],
        nullable=True,
    ),
]

# Text that is not a plain decimal within the bound, whatever the path.
REFUSED_TEXT = [
    "9999999999999999.9999", "1000000000000000", "0.00001", " 5 ", "5 ", "1e3", "1E3", "NaN",
    "nan", "Infinity", "-Infinity", "0x10", "1,000", "1_000", "-1", "-0", "+5", "5.",
    "\u0665",  # ARABIC-INDIC DIGIT FIVE: Python's Decimal reads it as 5
    "",
    "5\x00",  # a NUL: pages refuse the whole request (400), the API the field
]  # fmt: skip
# What only JSON can say: numbers, booleans, null, lists, objects are not decimal text.
REFUSED_JSON = [5, 5.5, True, None, [], {}]


def _refused_cases():
    for path in PATHS:
        values = REFUSED_TEXT + (REFUSED_JSON if path.kind != "form" else [])
        for value in values:
            if path.nullable and value in (None, ""):
                continue  # no limit / no overage price: a meaning, not an error
            yield pytest.param(path, value, id=f"{path.name} <- {value!r}")


def _names(details, name: str) -> bool:
    """True when the error details mention `name` as a key, however deep."""
    if isinstance(details, dict):
        return name in details or any(_names(v, name) for v in details.values())
    if isinstance(details, list):
        return any(_names(v, name) for v in details)
    return False


def assert_refused(path: Path, response) -> None:
    assert response.status_code < 500, response.content[:500]
    if path.kind == "form" and response.status_code == 400:
        assert b"could not be understood" in response.content  # the site's 400 page
        return
    if path.kind == "form":
        assert response.status_code == 200, f"a redirect ({response.status_code}): it was saved"
        assert b"errorlist" in response.content
        return
    body = response.json()
    if path.kind == "batch":
        assert response.status_code == 200
        assert body["accepted"] == 0 and body["rejected"][0]["index"] == 0
        error = body["rejected"][0]["error"]
    else:
        assert response.status_code == 400, body
        error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "invalid", error
    assert _names(error["details"], path.field), error


# The values that answered 500 in issue 16 (too many digits, "-0" on SQLite, " 5 "): after
# these, every read of the plan and the customer is tried; after the others, the customer's
# and the plan's API answers (rows are compared either way, so nothing else could change).
FULL_READS_AFTER = {"9999999999999999.9999", "-0", " 5 "}


@pytest.mark.parametrize(("path", "value"), list(_refused_cases()))
def test_a_value_outside_the_bound_is_refused_and_nothing_is_stored(c, world, path, value):
    # Given the rows the path could touch
    before = path.rows()
    # When the value is submitted
    response = path.submit(c, world, value)
    # Then it is refused with the field named, nothing changed, and the reads still answer
    assert_refused(path, response)
    assert path.rows() == before
    if isinstance(value, str) and value in FULL_READS_AFTER:
        assert_reads_answer(c, world, READS, path.changelist)
    else:
        assert_reads_answer(c, world, ["api entitlements", "api plan"])


def _edge_cases():
    for path in PATHS:
        for value in path.edges:
            yield pytest.param(path, value, id=f"{path.name} <- {value!r}")


@pytest.mark.parametrize(("path", "value"), list(_edge_cases()))
def test_a_value_at_the_edge_is_accepted_and_read_back_exactly(c, world, path, value):
    # When a value at the edge of the bound is submitted
    response = path.submit(c, world, value)
    # Then it is stored (an API 2xx, or a form that redirects), reads back as the same text,
    # and every read of that plan and customer still answers
    assert response.status_code in ((302,) if path.kind == "form" else (200, 201)), (
        response.content[:800]
    )
    if path.kind == "batch":
        assert response.json()["accepted"] == 1, response.json()
    assert path.read_back(c, world, response) == value
    assert_reads_answer(c, world, READS, path.changelist)


# --- dates: instants the periods can represent, ends and expiries still to come ---------------

FAR = ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]


def _api_json(c, method: str, url: str, body) -> object:
    """A JSON body sent as text: json.dumps escapes a lone surrogate (\\ud800), as a client
    in another language would send it."""
    return getattr(c.api, method)(url, json.dumps(body), content_type="application/json")


def _form_time(text: str) -> str:
    return text.removesuffix("Z")


@dataclass(frozen=True)
class DatePath:
    name: str
    kind: str  # api, batch or form
    field: str
    submit: object  # (c, world, text) -> response
    rows: object


_GRANTS = _rows(Grant, "feature__key", "quantity", "expires_at")
_OVERRIDES = _rows(EntitlementOverride, "feature__key", "limit", "starts_at", "ends_at")
_EVENTS = _rows(UsageEvent, "event_id", "quantity", "timestamp")
TIME_PATHS = [
    DatePath(
        "consume",
        "api",
        "timestamp",
        lambda c, w, t: _api_json(
            c,
            "post",
            f"/api/v1/customers/{ACME}/entitlements/data-transfer/consume",
            {"quantity": "1", "event_id": f"t-{next(_ids)}", "timestamp": t},
        ),
        _EVENTS,
    ),
    DatePath(
        "usage batch",
        "batch",
        "timestamp",
        lambda c, w, t: _api_json(
            c,
            "post",
            "/api/v1/usage",
            {"events": [{"event_id": f"t-{next(_ids)}", "customer": ACME,
                         "feature": "data-transfer", "quantity": "1", "timestamp": t}]},
        ),
        _EVENTS,
    ),
    DatePath(
        "api grant effective_at",
        "api",
        "effective_at",
        lambda c, w, t: _api_json(
            c, "post", f"/api/v1/customers/{ACME}/grants",
            {"feature": "data-transfer", "quantity": "1", "reason": "x", "effective_at": t},
        ),
        _GRANTS,
    ),
    DatePath(
        "api grant expires_at",
        "api",
        "expires_at",
        lambda c, w, t: _api_json(
            c, "post", f"/api/v1/customers/{ACME}/grants",
            {"feature": "data-transfer", "quantity": "1", "reason": "x", "expires_at": t},
        ),
        _GRANTS,
    ),
    DatePath(
        "api override starts_at",
        "api",
        "starts_at",
        lambda c, w, t: _api_json(
            c, "post", f"/api/v1/customers/{ACME}/overrides",
            {"feature": "data-transfer", "limit": "5", "reason": "x", "starts_at": t},
        ),
        _OVERRIDES,
    ),
    DatePath(
        "api override ends_at",
        "api",
        "ends_at",
        lambda c, w, t: _api_json(
            c, "post", f"/api/v1/customers/{ACME}/overrides",
            {"feature": "data-transfer", "limit": "5", "reason": "x", "ends_at": t},
        ),
        _OVERRIDES,
    ),
    DatePath(
        "support grant expires",
        "form",
        "expires_at",
        lambda c, w, t: _support_grant_post(c, w, expires_at=_form_time(t)),
        _GRANTS,
    ),
    DatePath(
        "support override starts",
        "form",
        "starts_at",
        lambda c, w, t: _support_override_post(c, w, starts_at=_form_time(t)),
        _OVERRIDES,
    ),
    DatePath(
        "support override ends",
        "form",
        "ends_at",
        lambda c, w, t: _support_override_post(c, w, ends_at=_form_time(t)),
        _OVERRIDES,
    ),
    DatePath(
        "admin grant expires",
        "form",
        "expires_at",
        lambda c, w, t: _admin_grant_post(c, w, expires_at_0=t[:10], expires_at_1=t[11:19]),
        _GRANTS,
    ),
]  # fmt: skip


def assert_date_refused(path, response, text: str) -> None:
    assert response.status_code < 500, response.content[:500]
    if path.kind == "form":
        assert response.status_code == 200 and b"errorlist" in response.content
        return
    body = response.json()
    if path.kind == "batch":
        assert response.status_code == 200 and body["accepted"] == 0, body
        error = body["rejected"][0]["error"]
    else:
        assert response.status_code == 400, body
        error = body["error"]
    assert _names(error["details"], path.field), error
    if text in FAR:  # the answer says what is accepted
        assert INSTANT_RULE in json.dumps(error), error


@pytest.mark.parametrize("text", [*FAR, "not a date"])
@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in TIME_PATHS])
def test_an_instant_the_periods_cannot_hold_is_refused(c, world, path, text):
    # Given the rows the path could touch
    before = path.rows()
    # When an instant far in the past or future (or no date at all) comes in
    response = path.submit(c, world, text)
    # Then it is refused, naming the field and the accepted range; nothing is stored
    assert_date_refused(path, response, text)
    assert path.rows() == before
    assert_reads_answer(c, world, ["api entitlements", "support page", "dashboard"])


def _iso(day: str) -> str:
    return f"{day}T00:00:00Z"


PAST, LATER, SOONER = "2020-01-01", "2031-02-01", "2031-01-01"
DATE_RULES = [
    # (path, field the error names, what is submitted)
    ("api override in the past", "api", "ends_at",
     lambda c, w: _api_json(c, "post", f"/api/v1/customers/{ACME}/overrides", {
         "feature": "data-transfer", "limit": "5", "reason": "x",
         "starts_at": _iso(PAST), "ends_at": _iso("2020-02-01")})),
    ("api override ends before it starts", "api", "ends_at",
     lambda c, w: _api_json(c, "post", f"/api/v1/customers/{ACME}/overrides", {
         "feature": "data-transfer", "limit": "5", "reason": "x",
         "starts_at": _iso(LATER), "ends_at": _iso(SOONER)})),
    ("api grant already expired", "api", "expires_at",
     lambda c, w: _api_json(c, "post", f"/api/v1/customers/{ACME}/grants", {
         "feature": "data-transfer", "quantity": "5", "reason": "x",
         "expires_at": _iso(PAST)})),
    ("support override in the past", "form", "ends_at",
     lambda c, w: _support_override_post(
         c, w, starts_at=f"{PAST}T00:00", ends_at="2020-02-01T00:00")),
    ("support override ends before it starts", "form", "ends_at",
     lambda c, w: _support_override_post(
         c, w, starts_at=f"{LATER}T00:00", ends_at=f"{SOONER}T00:00")),
    ("support grant already expired", "form", "expires_at",
     lambda c, w: _support_grant_post(c, w, expires_at=f"{PAST}T00:00")),
    ("admin override in the past", "form", "ends_at",
     lambda c, w: _admin_override_post(
         c, w, starts_at=dt.datetime(2020, 1, 1), ends_at=dt.datetime(2020, 2, 1))),
    ("admin override ends before it starts", "form", "ends_at",
     lambda c, w: _admin_override_post(
         c, w, starts_at=dt.datetime(2031, 2, 1), ends_at=dt.datetime(2031, 1, 1))),
    ("admin grant already expired", "form", "expires_at",
     lambda c, w: _admin_grant_post(c, w, expires_at=dt.datetime(2020, 1, 1))),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "field", "submit"), [
    pytest.param(*case[1:], id=case[0]) for case in DATE_RULES
])  # fmt: skip
def test_an_override_or_grant_that_would_never_apply_is_refused(c, world, kind, field, submit):
    # Given the customer's grants and overrides
    before = (_GRANTS(), _OVERRIDES())
    # When one is given dates that could never apply
    response = submit(c, world)
    # Then it is refused, saying which date is wrong, and nothing is stored
    assert response.status_code < 500
    if kind == "form":
        assert response.status_code == 200 and b"errorlist" in response.content
    else:
        assert response.status_code == 400
        assert _names(response.json()["error"]["details"], field), response.json()
    assert (_GRANTS(), _OVERRIDES()) == before


# --- ids and keys that appear in URLs ---------------------------------------------------------

BAD_IDS = ["a/b", "a b", "50%", "a?b", "a#b", "..", "a\x00b", "x" * 256]
ID_PATHS = [
    # (name, the field, url, body without the id, rows)
    ("customer external_id", "external_id", "/api/v1/customers",
     {"name": "New", "email": "new@example.test"}, _rows(Customer, "external_id")),
    ("plan key", "key", "/api/v1/plans", {"name": "New", "price": _money("5.00")},
     _rows(Plan, "key")),
    ("top-up pack key", "key", "/api/v1/topup-packs",
     {"name": "New", "feature": "storage", "quantity": "5", "price": _money("5.00")},
     _rows(TopUpPack, "key")),
    ("feature key", "key", "/api/v1/features", {"name": "New", "kind": "boolean"},
     _rows(Feature, "key")),
    ("top-up idempotency key", "idempotency_key", f"/api/v1/customers/{ACME}/topups",
     {"pack": "extra-20-gb"}, _rows(Invoice, "number")),
    ("reservation id", "reservation_id", f"{HOLDS}", {"quantity": "1"},
     _rows(Reservation, "reservation_id")),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
@pytest.mark.parametrize(
    ("field", "url", "body", "rows"), [pytest.param(*p[1:], id=p[0]) for p in ID_PATHS]
)
def test_an_id_that_could_not_be_named_in_a_url_is_refused(c, world, field, url, body, rows, bad):
    # Given the ids already taken
    before = rows()
    # When something is created under an id that a URL could not carry
    response = _api_json(c, "post", url, {**body, field: bad})
    # Then it is a 400 naming the field (a NUL: refused before any field is read), and
    # nothing is created
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert "\x00" in bad or _names(error["details"], field), error
    assert rows() == before


@pytest.mark.parametrize("key", ["a/b", "a b", "..", "a%2Fb", "a\x00b"], ids=repr)
def test_a_top_up_confirmed_with_a_key_no_url_can_carry_buys_nothing(c, world, key):
    # Given Acme's invoices and grants
    before = (_rows(Invoice, "number")(), _GRANTS())
    # When the dashboard's confirm step comes back with such an idempotency key
    response = c.customer.post("/dashboard/buy/pack/extra-20-gb/", {"idempotency_key": key})
    # Then nothing is bought and the page says so (no error page for a purchase made)
    assert response.status_code == 400
    if "\x00" not in key:  # a NUL is refused before the page: the site's 400
        assert b"Nothing was bought" in response.content
    assert (_rows(Invoice, "number")(), _GRANTS()) == before
    assert_reads_answer(c, world, ["dashboard", "dashboard invoices"])


# --- NUL bytes and lone surrogates, in paths, queries and JSON ---------------------------------

UNSTORABLE_URLS = [
    ("customer", "/billing/invoices/%00/"),
    ("customer", "/dashboard/buy/receipt/%00/"),
    ("customer", "/dashboard/plans/changed/%00/"),
    ("customer", "/dashboard/buy/%00/"),
    ("customer", "/dashboard/buy/receipt/%ED%A0%80/"),
    ("customer", "/billing/invoices/%ED%A0%80/"),
    ("pm", "/catalog/plans/basic/?add-feature=%00"),
    ("pm", "/catalog/plans/%00/"),
    ("support", "/support/?q=%00"),
    ("support", "/support/?q=%ED%A0%80"),
    ("admin", "/admin/customers/customer/?q=%00"),
    ("admin", "/admin/customers/grant/?q=%ED%A0%80"),
    ("admin", "/admin/customers/grant/?source__exact=%00"),
    ("admin", "/admin/customers/grant/?feature__id__exact=%00"),
    ("admin", "/admin/customers/usageevent/?customer__id__exact=%00"),
    ("admin", "/admin/catalog/planentitlement/?plan__id__exact=%00"),
    ("admin", "/admin/catalog/topuppack/?active__exact=%00"),
    ("admin", "/admin/customers/customer/%00/change/"),
    ("api", "/api/v1/customers/%00"),
    ("api", "/api/v1/customers/%00/entitlements"),
    ("api", f"/api/v1/customers/{ACME}/entitlements/%00"),
    ("api", f"/api/v1/customers/{ACME}/entitlements/%ED%A0%80"),
    ("api", "/api/v1/plans/%00"),
    ("api", "/api/v1/topup-packs/%00"),
    ("api", f"/api/v1/customers/{ACME}/invoices/%00"),
    ("api", "/api/v1/customers?search=%00"),
    ("api", f"/api/v1/customers/{ACME}/entitlements/data-transfer/usage?from=%00"),
]


@pytest.mark.parametrize(("role", "url"), UNSTORABLE_URLS, ids=[u for _, u in UNSTORABLE_URLS])
def test_unstorable_text_in_a_path_or_query_is_a_400_or_404(c, world, role, url):
    # When a page or API path (or its query) carries a NUL or a lone surrogate
    response = getattr(c, role).get(url)
    # Then it is a 400 or 404, never a 500; the API answers in its error format. (A surrogate
    # in a URL is invalid UTF-8, which Django reads as U+FFFD: a search for it finds nothing.)
    allowed = (400, 404) if "%00" in url or "?" not in url else (200, 400, 404)
    assert response.status_code in allowed, (response.status_code, response.content[:300])
    if role == "api":
        assert set(response.json()["error"]) == {"code", "message", "details"}


def _event(**fields) -> dict:
    return {"event_id": f"n-{next(_ids)}", "customer": ACME, "feature": "data-transfer",
            "quantity": "1", **fields}  # fmt: skip


CONSUME = f"/api/v1/customers/{ACME}/entitlements/data-transfer/consume"
UNSTORABLE_BODIES = [
    # (name, method, url, body with `X` standing for the bad text, rows, batch?)
    ("customer name", "post", "/api/v1/customers", {"external_id": "new", "name": "X"},
     _rows(Customer, "external_id", "name"), False),
    ("customer rename", "patch", f"/api/v1/customers/{ACME}", {"name": "X"},
     _rows(Customer, "external_id", "name"), False),
    ("plan name", "post", "/api/v1/plans", {"key": "new", "name": "X", "price": _money("5.00")},
     _rows(Plan, "key", "name"), False),
    ("feature name", "post", "/api/v1/features", {"key": "new", "name": "X", "kind": "boolean"},
     _rows(Feature, "key", "name"), False),
    ("grant reason", "post", f"/api/v1/customers/{ACME}/grants",
     {"feature": "data-transfer", "quantity": "1", "reason": "X"}, _GRANTS, False),
    ("override reason", "post", f"/api/v1/customers/{ACME}/overrides",
     {"feature": "data-transfer", "limit": "1", "reason": "X"}, _OVERRIDES, False),
    ("top-up idempotency key", "post", f"/api/v1/customers/{ACME}/topups",
     {"pack": "extra-20-gb", "idempotency_key": "X"}, _rows(Invoice, "number"), False),
    ("consume event id", "post", CONSUME, {"quantity": "1", "event_id": "X"}, _EVENTS, False),
    ("consume property", "post", CONSUME,
     {"quantity": "1", "event_id": "n-prop", "properties": {"region": "X"}}, _EVENTS, False),
    ("consume property name", "post", CONSUME,
     {"quantity": "1", "event_id": "n-key", "properties": {"X": 1}}, _EVENTS, False),
    ("batch event id", "post", "/api/v1/usage", {"events": [_event(event_id="X")]}, _EVENTS,
     True),
    ("batch property", "post", "/api/v1/usage",
     {"events": [_event(properties={"nested": ["X"]})]}, _EVENTS, True),
]  # fmt: skip


def _with(body, bad: str):
    """`body` with every "X" (value or key) replaced by `bad`."""
    if isinstance(body, dict):
        return {_with(k, bad): _with(v, bad) for k, v in body.items()}
    if isinstance(body, list):
        return [_with(v, bad) for v in body]
    return body.replace("X", bad) if body == "X" else body


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"], ids=["NUL", "lone surrogate"])
@pytest.mark.parametrize(
    ("method", "url", "body", "rows", "batch"),
    [pytest.param(*b[1:], id=b[0]) for b in UNSTORABLE_BODIES],
)
def test_unstorable_text_in_a_json_field_is_refused(c, world, method, url, body, rows, batch, bad):
    # Given the rows the request could touch
    before = rows()
    # When a JSON body carries a NUL or a lone surrogate in a name, reason, id or property
    response = _api_json(c, method, url, _with(body, bad))
    # Then it is refused in the error format (a batch rejects the event), nothing stored
    assert response.status_code < 500, response.content[:300]
    if batch and response.status_code == 200:  # else the whole body: a JSON parse error
        assert response.json()["accepted"] == 0
        error = response.json()["rejected"][0]["error"]
    else:
        assert response.status_code == 400, response.content[:300]
        error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert rows() == before
    assert_reads_answer(c, world, ["api entitlements", "support page"])
