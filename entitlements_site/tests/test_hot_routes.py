"""The lean hot path is routed from the API's own URL table (core.hot): the views that declare
`lean` are the ones it serves, on exactly their documented paths."""

from django.urls import get_resolver

from core.hot import lean_routes
from customers import api as customers_api


def test_the_lean_routes_are_the_url_tables_runtime_endpoints():
    routes = {(r.method, r.answer) for r in lean_routes(get_resolver().url_patterns)}
    assert routes == {
        ("GET", customers_api.check_answer),
        ("GET", customers_api.entitlements_answer),
        ("POST", customers_api.consume_answer),
        ("POST", customers_api.usage_batch_answer),
        ("POST", customers_api.hold_answer),
        ("POST", customers_api.commit_answer),
        ("DELETE", customers_api.release_answer),
    }


def test_each_lean_route_matches_its_path_only():
    by_answer = {r.answer: r for r in lean_routes(get_resolver().url_patterns)}
    check = by_answer[customers_api.check_answer].pattern
    consume = by_answer[customers_api.consume_answer].pattern
    assert check.match("/api/v1/customers/acme/entitlements/storage").groups() == (
        "acme",
        "storage",
    )
    assert check.match("/api/v1/customers/acme/entitlements/storage/usage") is None
    assert consume.match("/api/v1/customers/acme/entitlements/storage/consume")
    assert consume.match("/api/v1/customers/acme/entitlements/storage/consume/x") is None
    assert by_answer[customers_api.usage_batch_answer].pattern.match("/api/v1/usage")


def test_the_reservation_routes_match_their_paths_only():
    by_answer = {r.answer: r for r in lean_routes(get_resolver().url_patterns)}
    base = "/api/v1/customers/acme/entitlements/storage/reservations"
    hold = by_answer[customers_api.hold_answer].pattern
    commit = by_answer[customers_api.commit_answer].pattern
    release = by_answer[customers_api.release_answer].pattern
    assert hold.match(base).groups() == ("acme", "storage")
    assert hold.match(f"{base}/job-1") is None
    assert commit.match(f"{base}/job-1/commit").groups() == ("acme", "storage", "job-1")
    assert release.match(f"{base}/job-1").groups() == ("acme", "storage", "job-1")
    assert release.match(f"{base}/job-1/commit") is None
