"""Key scopes (DESIGN.md "HTTP API"): every endpoint x every scope. A runtime key checks,
consumes and reports usage; a read key makes every GET; a management key does everything. A
call outside a key's scope is a 403 `insufficient_scope` and changes nothing."""

import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from catalog.models import Plan
from core.models import ApiKey
from core.services import api_key_create
from customers.models import UsageEvent

RUNTIME_VIEWS = {
    "entitlements",
    "entitlement",
    "consume",
    "usage-buckets",
    "usage",
    "portal-sessions",
    "reservations",
    "reservation",
    "reservation-commit",
}
ARGS = {
    "external_id": "acme",
    "feature_key": "data-transfer",
    "pk": "1",
    "number": "INV-2026-000001",
    "plan_key": "basic",
    "n": "1",
    "pack_key": "extra",
    "reservation_id": "r-1",
    "event_id": "e-1",  # reversals: management only (DESIGN.md's runtime list omits them)
}


def v1_endpoints():
    """(url name, path, methods) of every /api/v1/ endpoint, read off the URL configuration."""
    api = next(p for p in get_resolver().url_patterns if getattr(p, "app_name", None) == "api")
    v1 = next(p for p in api.url_patterns if isinstance(p, URLResolver))
    for pattern in v1.url_patterns:
        assert isinstance(pattern, URLPattern)
        view = pattern.callback.view_class
        path = "/api/v1/" + str(pattern.pattern)
        for name, value in ARGS.items():
            for converter in ("str", "int", "path"):
                path = path.replace(f"<{converter}:{name}>", value)
        methods = [m.upper() for m in view.http_method_names if hasattr(view, m) and m != "options"]
        yield pattern.name, path, [m for m in methods if m != "HEAD"]


ENDPOINTS = [(name, path, method) for name, path, methods in v1_endpoints() for method in methods]


def allowed(scope: str, name: str, method: str) -> bool:
    return (
        scope == "management"
        or (scope == "runtime" and name in RUNTIME_VIEWS)
        or (scope == "read" and method == "GET")
    )


@pytest.fixture
def keys(db):
    return {s: api_key_create(name=s, scope=s)[1] for s in ("runtime", "read", "management")}


def test_the_table_covers_every_endpoint():
    names = {name for name, _, _ in ENDPOINTS}
    assert names >= RUNTIME_VIEWS and {"plans", "plan", "customers", "grants"} <= names
    assert len(ENDPOINTS) >= 30


@pytest.mark.parametrize("scope", ["runtime", "read", "management"])
@pytest.mark.parametrize("name, path, method", ENDPOINTS, ids=[f"{m} {n}" for n, _, m in ENDPOINTS])
def test_every_endpoint_answers_by_the_keys_scope(customer, keys, scope, name, path, method):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {keys[scope]}")
    plans_before = list(Plan.objects.values_list("key", "price"))

    response = client.generic(method, path, "{}", content_type="application/json")

    refused = (
        response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"
    )
    assert refused is not allowed(scope, name, method), (response.status_code, response.content)
    assert response.status_code < 500
    if refused:
        assert list(Plan.objects.values_list("key", "price")) == plans_before
        assert scope in response.json()["error"]["message"]


def test_a_runtime_key_consumes_and_is_refused_a_plan_edit(customer, keys):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {keys['runtime']}")

    consumed = client.post(
        "/api/v1/customers/acme/entitlements/data-transfer/consume",
        {"quantity": "2", "event_id": "scoped-1"},
        format="json",
    )
    edit = client.patch("/api/v1/plans/basic", {"name": "Free for all"}, format="json")

    assert consumed.status_code == 200 and consumed.json()["allowed"] is True
    assert UsageEvent.objects.filter(event_id="scoped-1").count() == 1
    assert edit.status_code == 403
    assert edit.json()["error"]["code"] == "insufficient_scope"
    assert Plan.objects.get(key="basic").name == "Basic Storage"


def test_create_api_key_takes_a_scope(db, capsys):
    call_command("create_api_key", "app-server", "--scope", "runtime")
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert ApiKey.objects.get(name="app-server").scope == "runtime"
    assert key.startswith("ent_")
    call_command("create_api_key", "ops")
    assert ApiKey.objects.get(name="ops").scope == "management"  # existing keys keep working


def test_the_schema_names_the_scopes_of_each_operation(db, client):
    schema = client.get("/api/schema/?format=json").json()
    consume = schema["paths"]["/api/v1/customers/{external_id}/entitlements/{feature_key}/consume"]
    plan = schema["paths"]["/api/v1/plans/{plan_key}"]
    assert "`runtime`, `management`" in consume["post"]["description"]
    assert "`read`, `management`" in plan["get"]["description"]
    assert "Key scopes allowed: `management`." in plan["patch"]["description"]
