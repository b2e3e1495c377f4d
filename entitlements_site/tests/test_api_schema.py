"""The OpenAPI schema as generated clients see it: operationIds in the domain's words, every
error status documented in the one error format, and the API's own answers (error JSON, never
an HTML page) for paths and methods it does not have. test_schemathesis.py checks the live
answers against the schema."""

import pytest

from core.openapi import operation_id

# The operationId scheme (core/openapi.py), endpoint by endpoint.
OPERATION_IDS = {
    ("GET", "/api/v1/customers"): "customers_list",
    ("POST", "/api/v1/customers"): "customer_create",
    ("GET", "/api/v1/customers/{external_id}"): "customer_get",
    ("PUT", "/api/v1/customers/{external_id}"): "customer_replace",
    ("PATCH", "/api/v1/customers/{external_id}"): "customer_update",
    ("GET", "/api/v1/customers/{external_id}/entitlements"): "customer_entitlements_list",
    ("GET", "/api/v1/customers/{external_id}/entitlements/{feature_key}"): (
        "customer_entitlement_get"
    ),
    ("POST", "/api/v1/customers/{external_id}/entitlements/{feature_key}/consume"): (
        "customer_entitlement_consume"
    ),
    ("GET", "/api/v1/customers/{external_id}/entitlements/{feature_key}/usage"): (
        "customer_entitlement_usage_get"
    ),
    ("POST", "/api/v1/usage"): "usage_ingest",
    ("GET", "/api/v1/customers/{external_id}/overrides"): "customer_overrides_list",
    ("POST", "/api/v1/customers/{external_id}/overrides"): "customer_override_create",
    ("GET", "/api/v1/customers/{external_id}/overrides/{id}"): "customer_override_get",
    ("DELETE", "/api/v1/customers/{external_id}/overrides/{id}"): "customer_override_end",
    ("GET", "/api/v1/customers/{external_id}/grants"): "customer_grants_list",
    ("POST", "/api/v1/customers/{external_id}/grants"): "customer_grant_create",
    ("GET", "/api/v1/customers/{external_id}/grants/{id}"): "customer_grant_get",
    ("DELETE", "/api/v1/customers/{external_id}/grants/{id}"): "customer_grant_void",
    ("GET", "/api/v1/customers/{external_id}/subscription"): "customer_subscription_get",
    ("POST", "/api/v1/customers/{external_id}/subscription"): "customer_subscription_create",
    ("DELETE", "/api/v1/customers/{external_id}/subscription"): "customer_subscription_cancel",
    ("POST", "/api/v1/customers/{external_id}/topups"): "customer_topup_purchase",
    ("GET", "/api/v1/customers/{external_id}/invoices"): "customer_invoices_list",
    ("GET", "/api/v1/customers/{external_id}/invoices/{number}"): "customer_invoice_get",
    ("GET", "/api/v1/features"): "features_list",
    ("POST", "/api/v1/features"): "feature_create",
    ("GET", "/api/v1/features/{feature_key}"): "feature_get",
    ("PUT", "/api/v1/features/{feature_key}"): "feature_replace",
    ("PATCH", "/api/v1/features/{feature_key}"): "feature_update",
    ("DELETE", "/api/v1/features/{feature_key}"): "feature_delete",
    ("GET", "/api/v1/plans"): "plans_list",
    ("POST", "/api/v1/plans"): "plan_create",
    ("GET", "/api/v1/plans/{plan_key}"): "plan_get",
    ("PUT", "/api/v1/plans/{plan_key}"): "plan_replace",
    ("PATCH", "/api/v1/plans/{plan_key}"): "plan_update",
    ("DELETE", "/api/v1/plans/{plan_key}"): "plan_delete",
    ("GET", "/api/v1/topup-packs"): "topup_packs_list",
    ("POST", "/api/v1/topup-packs"): "topup_pack_create",
    ("GET", "/api/v1/topup-packs/{pack_key}"): "topup_pack_get",
    ("PUT", "/api/v1/topup-packs/{pack_key}"): "topup_pack_replace",
    ("PATCH", "/api/v1/topup-packs/{pack_key}"): "topup_pack_update",
    ("DELETE", "/api/v1/topup-packs/{pack_key}"): "topup_pack_delete",
}


@pytest.fixture
def schema(client, db):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def _operations(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def test_operation_ids_are_the_domains_words_and_unique(schema):
    # Given the served schema, when a client generator reads its operationIds
    found = {(method, path): op["operationId"] for method, path, op in _operations(schema)}

    # Then each known endpoint has its documented name, and no two operations share one
    for endpoint, name in OPERATION_IDS.items():
        assert found.get(endpoint) == name, endpoint
    assert len(set(found.values())) == len(found)
    assert not [name for name in found.values() if name.startswith("v1_")]


def test_the_scheme_names_endpoints_yet_to_come():
    # Given paths DESIGN.md describes, when they are named by the same scheme
    base = "/api/v1/customers/{external_id}"
    reservations = f"{base}/entitlements/{{feature_key}}/reservations"
    # Then their names follow the same words
    assert operation_id("POST", f"{base}/portal-sessions") == "customer_portal_session_create"
    assert operation_id("POST", reservations) == "customer_entitlement_reservation_create"
    assert operation_id("POST", f"{reservations}/{{id}}/commit") == (
        "customer_entitlement_reservation_commit"
    )
    assert operation_id("DELETE", f"{reservations}/{{id}}") == (
        "customer_entitlement_reservation_release"
    )
    assert operation_id("POST", "/api/v1/plans/{plan_key}/versions/{n}/publish") == (
        "plan_version_publish"
    )


def test_every_operation_documents_its_errors_in_the_error_format(schema):
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message", "details"]
    for method, path, operation in _operations(schema):
        responses = operation["responses"]
        expected = {"400", "401", "403", "429"}
        if "{" in path:
            expected.add("404")
        if method != "GET":
            expected.add("409")
        if method in ("POST", "PUT", "PATCH"):
            expected.add("415")
        assert expected <= set(responses), (method, path)
        for code, response in responses.items():
            if code >= "400":
                content = response["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/Error"}, (method, path, code)
                assert response["description"], (method, path, code)


def test_list_endpoints_document_and_enforce_their_page_bounds(schema, api):
    # Given the schema's limit and offset of a list endpoint
    parameters = {
        p["name"]: p["schema"] for p in schema["paths"]["/api/v1/plans"]["get"]["parameters"]
    }
    assert parameters["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}
    assert parameters["offset"]["minimum"] == 0
    top = parameters["offset"]["maximum"]

    # When a client asks within them, it gets a page; outside them, a 400 naming the parameter
    assert api.get(f"/api/v1/plans?limit=1000&offset={top}").json()["results"] == []
    for query, name in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        (f"offset={top + 1}", "offset"),
        ("offset=-1", "offset"),
        ("offset=null", "offset"),
        ("offset=1&offset=2", "offset"),
        ("offset=99999999999999999999999", "offset"),
    ]:
        response = api.get(f"/api/v1/plans?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "invalid"
        assert name in response.json()["error"]["details"], query


@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete", "options"])
@pytest.mark.parametrize(
    "path", ["/api/v1/nope", "/api/v1/customers/acme/overrides/abc", "/api/v2/customers", "/api/x"]
)
def test_unknown_api_paths_answer_404_error_json_for_every_method(db, method, path):
    # Given a client without a CSRF cookie or session (a program calling the API)
    from django.test import Client

    client = Client(enforce_csrf_checks=True)

    # When it calls a path the API does not have, whatever the method
    response = getattr(client, method)(path, content_type="application/json")

    # Then it gets a 404 in the error format, not the CSRF page
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "/api/v1/usage"),
        ("delete", "/api/v1/customers"),
        ("patch", "/api/v1/customers/acme/entitlements"),
        ("post", "/api/schema/"),
        ("post", "/api/docs/"),
    ],
)
def test_a_wrong_method_on_a_known_path_answers_405_error_json(db, api, method, path):
    response = getattr(api, method)(path, {}, format="json")
    assert response.status_code == 405
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_schema_and_docs_are_served_without_a_cdn(client, db):
    schema_response = client.get("/api/schema/")
    assert schema_response.status_code == 200
    assert b"/api/v1/customers/{external_id}/entitlements/{feature_key}/consume" in (
        schema_response.content
    )
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/" in html
    assert "cdn" not in html.lower() and "https://" not in html


def test_boolean_filters_accept_only_true_or_false(api, plan):
    # Given a public filter on the plan list: true or false filter it
    assert api.get("/api/v1/plans?public=false").status_code == 200
    # When it is anything else, or given twice, Then a 400 names it (nothing silently ignored)
    for query in ["public=null", "public=yes", "public=true&public=false"]:
        response = api.get(f"/api/v1/plans?{query}")
        assert response.status_code == 400, query
        assert "public" in response.json()["error"]["details"]
