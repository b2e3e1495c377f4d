"""The OpenAPI schema is the contract: schemathesis generates requests from /api/schema/, valid
and invalid ones, sends them to the live test server with a real API key, and checks that no
answer is a 5xx, that every status is one the schema documents for that operation, and that
every body matches the documented schema. Bounded and derandomized: the same cases every run,
in well under a minute."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from catalog.demo import seed_catalog
from customers import services as customer_services

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 6
# Path values of rows the test creates, so that generated requests reach real rows and not
# only 404s; every operation also runs with generated path values.
KNOWN = {
    "external_id": "acme",
    "feature_key": "data-transfer",
    "plan_key": "basic",
    "pack_key": "extra-20-gb",
}
# Failures owed to the validation of decimals, dates, URL-safe ids and NUL bytes, which is
# being rewritten in parallel (issue 16, items 1-3): (operationId, check name) pairs skipped
# here. The lead empties this list once that work is merged.
KNOWN_ELSEWHERE: set[tuple[str, str]] = set()


def _run(operation, api_key: str, mode: GenerationMode, path_parameters, failures: list) -> int:
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
    label = f"{operation.method.upper()} {operation.path} ({mode.value})"
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
        calls.append(case)
        response = case.call(headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
        checks = [
            check
            for check in CHECKS
            if (operation.definition.raw.get("operationId"), check.__name__) not in KNOWN_ELSEWHERE
        ]
        try:
            case.validate_response(response, checks=checks)
        except (Failure, FailureGroup) as failure:  # collected: the test reports them all
            request = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}"
            failures.append(f"{label}: {failure}\n    {request}"[:1500])

    run()
    return len(calls)


@pytest.mark.django_db(transaction=True)
def test_every_answer_is_documented_by_the_schema(live_server, api_key):
    # Given the demo catalog and a subscribed customer
    plans = seed_catalog()
    customer = customer_services.customer_create(external_id="acme", name="Acme")
    customer_services.subscription_start(customer=customer, plan=plans["basic"])
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]

    # When schemathesis sends valid and invalid requests to every operation
    failures: list[str] = []
    calls = 0
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        known = {name: KNOWN[name] for name in names if name in KNOWN}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if known and not (names - set(known)):
                calls += _run(operation, api_key, mode, known, failures)
            calls += _run(operation, api_key, mode, None, failures)

    # Then no answer is a 5xx, has an undocumented status or breaks its documented body
    assert len(operations) >= 42
    assert calls >= len(operations) * EXAMPLES_PER_OPERATION
    assert not failures, f"{len(failures)} of {calls} cases failed:\n" + "\n".join(failures)
