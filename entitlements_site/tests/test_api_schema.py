"""The OpenAPI schema is the contract: schemathesis generates requests from it against a live
test server and checks that nothing answers 5xx or breaks the schema."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from catalog.demo import seed_catalog
from customers import services as customer_services

EXAMPLES_PER_OPERATION = 10
# Known path values, so that generated requests reach real rows and not only 404s.
KNOWN = {
    "external_id": "acme",
    "feature_key": "data-transfer",
    "plan_key": "basic",
    "pack_key": "extra-20-gb",
}


def _run_operation(operation, api_key: str, path_parameters: dict | None) -> int:
    strategy = operation.as_strategy(path_parameters=path_parameters)
    calls = []

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case):
        calls.append(case.method)
        response = case.call(headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    run()
    return len(calls)


@pytest.mark.django_db(transaction=True)
def test_api_answers_within_its_schema_and_never_5xx(live_server, api_key):
    plans = seed_catalog()
    customer = customer_services.customer_create(external_id="acme", name="Acme")
    customer_services.subscription_start(customer=customer, plan=plans["basic"])
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    calls = 0
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        known = {name: KNOWN[name] for name in names if name in KNOWN}
        if known and not (names - set(known)):
            calls += _run_operation(operation, api_key, known)
        calls += _run_operation(operation, api_key, None)
    assert calls >= len(operations) * 3


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
