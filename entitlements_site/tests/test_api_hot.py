"""The hot endpoints: check one, check all, consume, batch usage, usage buckets."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from core.models import ApiKey
from core.services import api_key_revoke
from customers import services as customer_services
from customers.models import UsageCounter, UsageEvent

pytestmark = pytest.mark.django_db
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def url(customer="acme", feature=None, action=None):
    path = f"/api/v1/customers/{customer}/entitlements"
    if feature:
        path += f"/{feature}"
    if action:
        path += f"/{action}"
    return path


def consume(api, feature="data-transfer", customer="acme", **body):
    return api.post(url(customer, feature, "consume"), body, format="json")


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz", "Bearer"],
    ids=["missing", "wrong", "other-scheme", "empty"],
)
def test_bad_credentials_get_401_in_the_error_format(customer, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(url(feature="storage"))
    assert_error(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_key_gets_401(customer, api, api_key):
    api_key_revoke(api_key=ApiKey.objects.get())
    assert_error(api.get(url(feature="storage")), 401, "unauthenticated")


def test_keys_are_stored_hashed_and_last_use_recorded(customer, api, api_key):
    row = ApiKey.objects.get()
    assert api_key not in (row.key_hash, row.prefix) and api_key.startswith(row.prefix)
    assert row.last_used_at is None
    api.get(url(feature="storage"))
    row.refresh_from_db()
    assert row.last_used_at is not None


# --- check ----------------------------------------------------------------------------------


def test_check_one_metered(customer, api):
    body = api.get(url(feature="data-transfer")).json()
    assert body["feature"] == "data-transfer"
    assert body["kind"] == "metered"
    assert body["has_access"] is True
    assert (body["limit"], body["usage"], body["balance"], body["granted"]) == (
        "20",
        "0",
        "20",
        "0",
    )
    assert body["overage"] == "0" and body["enforcement"] == "hard" and body["source"] == "plan"
    for key in ("period_start", "period_end", "resets_at"):
        assert ISO_UTC.match(body[key]), body[key]
    assert set(body) == {
        "feature", "kind", "has_access", "value", "unlimited", "limit", "granted", "usage",
        "balance", "overage", "reserved", "enforcement", "source", "period_start", "period_end",
        "resets_at",
    }  # fmt: skip


def test_check_one_boolean_and_config(customer, api):
    gate = api.get(url(feature="file-versioning")).json()
    assert gate["has_access"] is True and gate["limit"] is None and gate["usage"] is None
    tier = api.get(url(feature="support-tier")).json()
    assert tier["value"] == "standard" and tier["has_access"] is True


def test_check_all(customer, api):
    body = api.get(url()).json()
    assert body["customer"] == "acme" and body["plan"] == "basic"
    assert [e["feature"] for e in body["entitlements"]] == [
        "data-transfer", "file-versioning", "storage", "support-tier",
    ]  # fmt: skip


def test_unknown_customer_and_feature_are_404(customer, api):
    assert_error(api.get(url("nobody", "storage")), 404, "customer_not_found")
    assert_error(api.get(url("nobody")), 404, "customer_not_found")
    assert_error(api.get(url(feature="teleport")), 404, "feature_not_found")
    assert_error(consume(api, "teleport", quantity="1", event_id="e"), 404, "feature_not_found")


def test_answers_say_their_length(customer, api):
    """Every lean answer, success or error, carries its Content-Length (so the server never
    sends it chunked, in one more write)."""
    answers = [
        api.get(url(feature="data-transfer")),
        api.get(url()),
        consume(api, quantity="1", event_id="length-1"),
        consume(api, quantity="-1", event_id="length-2"),
        APIClient().get(url(feature="data-transfer")),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 401]
    for answer in answers:
        assert answer["Content-Length"] == str(len(answer.content))


def test_unknown_api_path_is_404_json(api):
    assert_error(api.get("/api/v1/nothing-here"), 404, "not_found")


# --- consume --------------------------------------------------------------------------------


def test_consume_allowed_then_denied_past_the_hard_limit(customer, api):
    first = consume(api, quantity="15", event_id="e1").json()
    assert first["allowed"] is True and first["reason"] is None
    assert first["entitlement"]["usage"] == "15" and first["entitlement"]["balance"] == "5"

    denied = consume(api, quantity="5.5", event_id="e2")
    assert denied.status_code == 200
    assert denied.json()["allowed"] is False
    assert denied.json()["reason"] == "limit_exceeded"
    assert denied.json()["entitlement"]["balance"] == "5"
    assert UsageEvent.objects.count() == 1  # the denial recorded nothing


def test_consume_replay_returns_first_outcome_and_counts_once(customer, api):
    first = consume(api, quantity="2.5", event_id="same").json()
    again = consume(api, quantity="2.5", event_id="same").json()
    assert first["allowed"] is again["allowed"] is True
    assert again["entitlement"]["usage"] == "2.5"
    assert UsageEvent.objects.filter(event_id="same").count() == 1


def test_consume_reusing_an_event_id_for_another_feature_is_409(customer, api):
    consume(api, quantity="1", event_id="k1")
    assert_error(consume(api, "storage", quantity="1", event_id="k1"), 409, "idempotency_conflict")


def test_consume_dry_run_records_nothing(customer, api):
    body = consume(api, quantity="3", event_id="dry", dry_run=True).json()
    assert body["allowed"] is True and body["entitlement"]["usage"] == "3"
    assert UsageEvent.objects.count() == 0
    assert api.get(url(feature="data-transfer")).json()["usage"] == "0"


def test_consume_a_gate_is_400_not_metered(customer, api):
    assert_error(consume(api, "file-versioning", quantity="1", event_id="g"), 400, "not_metered")


def test_customer_without_subscription_gets_no_access(plan, api):
    customer_services.customer_create(external_id="lapsed", name="Lapsed Ltd")
    body = consume(api, customer="lapsed", quantity="1", event_id="n1").json()
    assert body["allowed"] is False and body["reason"] == "no_access"
    assert body["entitlement"]["has_access"] is False and body["entitlement"]["source"] is None


@pytest.mark.parametrize(
    "body, code",
    [
        ({"quantity": "-1", "event_id": "a"}, "invalid"),
        ({"quantity": "0", "event_id": "a"}, "invalid"),
        ({"quantity": "lots", "event_id": "a"}, "invalid"),
        ({"quantity": "NaN", "event_id": "a"}, "invalid"),
        ({"quantity": "1.00001", "event_id": "a"}, "invalid"),
        ({"quantity": 2, "event_id": "a"}, "invalid"),  # a JSON number: decimals are strings
        ({"event_id": "a"}, "invalid"),
        ({"quantity": "1"}, "invalid"),
        ({"quantity": "1", "event_id": ""}, "invalid"),
        ({"quantity": "1", "event_id": 7}, "invalid"),
        ({"quantity": "1", "event_id": "a", "timestamp": "yesterday"}, "invalid"),
        ({"quantity": "1", "event_id": "a", "dry_run": "yes"}, "invalid_dry_run"),
        ({"quantity": "1", "event_id": "a", "properties": [1]}, "invalid"),
    ],
)
def test_consume_bad_input_is_400_and_changes_nothing(customer, api, body, code):
    assert_error(consume(api, **body), 400, code)
    assert UsageEvent.objects.count() == 0


def test_malformed_json_is_400(customer, api):
    response = api.post(
        url(feature="data-transfer", action="consume"), "{not json", content_type="application/json"
    )
    assert_error(response, 400, "parse_error")
    response = api.post(url(feature="data-transfer", action="consume"), [1, 2], format="json")
    assert_error(response, 400, "invalid_body")


def test_consume_accepts_a_timestamp_and_properties(customer, api):
    stamp = (timezone.now() - dt.timedelta(minutes=5)).isoformat()
    body = consume(api, quantity="2", event_id="n", timestamp=stamp, properties={"file": "a"})
    assert body.json()["allowed"] is True
    event = UsageEvent.objects.get()
    assert event.quantity == Decimal("2") and event.properties == {"file": "a"}


# --- batch usage ----------------------------------------------------------------------------


def test_batch_accepts_counts_duplicates_and_rejects_per_event(customer, api):
    events = [
        {"event_id": "b1", "customer": "acme", "feature": "data-transfer", "quantity": "4"},
        {"event_id": "b2", "customer": "acme", "feature": "data-transfer", "quantity": "30"},
        {"event_id": "b1", "customer": "acme", "feature": "data-transfer", "quantity": "4"},
        {"event_id": "b3", "customer": "ghost", "feature": "data-transfer", "quantity": "1"},
        {"event_id": "b4", "customer": "acme", "feature": "file-versioning", "quantity": "1"},
        {"event_id": "b5", "customer": "acme", "feature": "data-transfer", "quantity": "-2"},
        "not an object",
    ]
    body = api.post("/api/v1/usage", {"events": events}, format="json").json()
    assert body["accepted"] == 2 and body["duplicates"] == 1
    assert [(r["index"], r["error"]["code"]) for r in body["rejected"]] == [
        (3, "customer_not_found"),
        (4, "not_metered"),
        (5, "invalid"),
        (6, "invalid_event"),
    ]
    # Reported usage is recorded past the hard limit and shows as overage.
    check = api.get(url(feature="data-transfer")).json()
    assert (check["usage"], check["overage"], check["balance"]) == ("34", "14", "0")

    replay = api.post("/api/v1/usage", {"events": events[:3]}, format="json").json()
    assert (replay["accepted"], replay["duplicates"]) == (0, 3)
    assert UsageEvent.objects.count() == 2


def test_batch_limits_and_shape(customer, api):
    event = {"event_id": "x", "customer": "acme", "feature": "data-transfer", "quantity": "1"}
    too_many = [dict(event, event_id=str(i)) for i in range(1001)]
    assert_error(api.post("/api/v1/usage", {"events": too_many}, format="json"), 400,
                 "batch_too_large")  # fmt: skip
    assert_error(api.post("/api/v1/usage", {"events": "x"}, format="json"), 400, "invalid_events")
    assert_error(api.post("/api/v1/usage", {}, format="json"), 400, "invalid_events")
    assert UsageEvent.objects.count() == 0


def test_batch_latest_feature_keeps_the_last_level(customer, api):
    now = timezone.now()
    events = [
        {"event_id": f"s{i}", "customer": "acme", "feature": "storage", "quantity": q,
         "timestamp": (now - dt.timedelta(hours=h)).isoformat()}
        for i, (q, h) in enumerate([("40", 3), ("55.5", 1), ("70", 2)])
    ]  # fmt: skip
    api.post("/api/v1/usage", {"events": events}, format="json")
    assert api.get(url(feature="storage")).json()["usage"] == "55.5"


# --- usage buckets ---------------------------------------------------------------------------


def test_usage_buckets_by_day(customer, api):
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    events = [
        {"event_id": f"d{i}", "customer": "acme", "feature": "data-transfer", "quantity": "1.5",
         "timestamp": (start - dt.timedelta(days=i % 2, hours=-1)).isoformat()}
        for i in range(4)
    ]  # fmt: skip
    api.post("/api/v1/usage", {"events": events}, format="json")
    frm = (start - dt.timedelta(days=1)).isoformat().replace("+00:00", "Z")
    to = (start + dt.timedelta(days=1)).isoformat().replace("+00:00", "Z")
    body = api.get(
        url(feature="data-transfer", action="usage"), {"from": frm, "to": to, "window": "day"}
    ).json()
    assert body["feature"] == "data-transfer" and body["window"] == "day"
    assert [b["usage"] for b in body["buckets"]] == ["3", "3"]
    assert all(ISO_UTC.match(b["start"]) for b in body["buckets"])


def test_usage_buckets_default_to_the_current_period(customer, api):
    body = api.get(url(feature="data-transfer", action="usage")).json()
    assert 30 <= len(body["buckets"]) <= 32


@pytest.mark.parametrize(
    "params, code",
    [
        ({"window": "year"}, "invalid_window"),
        ({"from": "soon"}, "invalid_time"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "invalid_range"),
        ({"from": "2000-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z", "window": "hour"},
         "range_too_large"),
    ],
)  # fmt: skip
def test_usage_buckets_bad_params(customer, api, params, code):
    assert_error(api.get(url(feature="data-transfer", action="usage"), params), 400, code)


# --- cost of the hot path ---------------------------------------------------------------------


@pytest.mark.parametrize("events", [10, 2000])
def test_hot_endpoints_cost_a_fixed_number_of_queries(
    customer, api, django_assert_max_num_queries, events
):
    customer_services.grant_create(
        customer=customer, feature=customer.subscriptions.get().plan.entitlements.get(
            feature__key="data-transfer").feature, quantity=Decimal("100000")
    )  # fmt: skip
    batch = [
        {"event_id": f"h{i}", "customer": "acme", "feature": "data-transfer", "quantity": "1"}
        for i in range(events)
    ]
    for start in range(0, events, 1000):
        api.post("/api/v1/usage", {"events": batch[start : start + 1000]}, format="json")
    api.get(url(feature="data-transfer"))  # last_used_at written once a minute, not per call
    with django_assert_max_num_queries(HOT_QUERIES["check"]):
        api.get(url(feature="data-transfer"))
    with django_assert_max_num_queries(HOT_QUERIES["check_all"]):
        api.get(url())
    with django_assert_max_num_queries(HOT_QUERIES["consume"]):
        assert consume(api, quantity="1", event_id="hot").json()["allowed"] is True
    assert UsageCounter.objects.get(window="billing_period", feature__key="data-transfer").used == (
        events + 1
    )


# Warm (the key and the customer's state cached): one query for a check; a consume locks the
# counters and grants, sums the units reservations hold, inserts the event, updates counters and
# the grant it draws on, in its savepoint (SAVEPOINT and RELEASE count here; in production they
# are BEGIN and COMMIT, and PostgreSQL's two round trips outside a transaction do it all), and
# records what it took from the grant (the draw ledger: one insert, only when it draws).
HOT_QUERIES = {"check": 1, "check_all": 1, "consume": 9}
