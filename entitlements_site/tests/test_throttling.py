"""API rate limiting per key (issue 9): each API key has its own budget of requests per window,
counted in the shared cache; past it the API answers 429 in the error JSON with Retry-After,
and the request does nothing. Other keys are not affected.

The rate comes from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["api_key"] (API_RATE_LIMIT in the
environment); the tests lower it to 5 a minute.
"""

import time

import pytest
from rest_framework.test import APIClient

from core import api_keys
from core.api_keys import ApiKeyRateThrottle
from core.services import api_key_create
from customers.models import UsageEvent

RATE = "5/min"
LIMIT = 5


@pytest.fixture(autouse=True)
def five_a_minute(settings, monkeypatch):
    """DRF reads the rates into the throttle class when it is defined: the setting (which
    reloads DRF's api_settings) and the class attribute are both lowered."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": RATE},
    }
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": RATE}, raising=False)
    # The clock stands still a second into a minute: a test's requests never straddle two
    # fixed windows (which would let the sixth through).
    now = time.time()
    frozen = now - now % 60 + 1
    monkeypatch.setattr(api_keys, "throttle_clock", lambda: frozen)


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def second_key(db):
    return api_key_create(name="second")[1]


ENTITLEMENTS = "/api/v1/customers/acme/entitlements"


def assert_throttled(response):
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert error["code"] == "throttled"
    assert error["message"]
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 61


def test_the_sixth_request_in_a_minute_is_429_with_retry_after(customer, api_key):
    client = client_for(api_key)
    for _ in range(LIMIT):
        assert client.get(ENTITLEMENTS).status_code == 200
    assert_throttled(client.get(ENTITLEMENTS))


def test_another_key_is_not_affected(customer, api_key, second_key):
    first = client_for(api_key)
    for _ in range(LIMIT):
        first.get(ENTITLEMENTS)
    assert_throttled(first.get(ENTITLEMENTS))

    second = client_for(second_key)
    for _ in range(LIMIT):
        assert second.get(ENTITLEMENTS).status_code == 200
    assert_throttled(second.get(ENTITLEMENTS))


def test_every_endpoint_counts_against_the_key_and_a_throttled_consume_records_nothing(
    customer, api_key
):
    client = client_for(api_key)
    consume = f"{ENTITLEMENTS}/data-transfer/consume"
    assert client.get(ENTITLEMENTS).status_code == 200
    assert client.get("/api/v1/features").status_code == 200
    assert client.get("/api/v1/plans/basic").status_code == 200
    for n in range(2):
        body = {"quantity": "1", "event_id": f"ok-{n}"}
        assert client.post(consume, body, format="json").json()["allowed"] is True
    assert UsageEvent.objects.count() == 2

    assert_throttled(client.post(consume, {"quantity": "1", "event_id": "late"}, format="json"))
    batch = {
        "events": [
            {"event_id": "late-batch", "customer": "acme", "feature": "data-transfer",
             "quantity": "1"}
        ]
    }  # fmt: skip
    assert_throttled(client.post("/api/v1/usage", batch, format="json"))
    assert UsageEvent.objects.count() == 2


def test_the_key_may_call_again_in_the_next_window(customer, api_key, monkeypatch):
    client = client_for(api_key)
    for _ in range(LIMIT):
        client.get(ENTITLEMENTS)
    assert_throttled(client.get(ENTITLEMENTS))

    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(api_keys, "throttle_clock", lambda: later)
    assert client.get(ENTITLEMENTS).status_code == 200


def test_requests_without_a_valid_key_are_refused_before_any_budget_is_used(customer, api_key):
    stranger = APIClient()
    bad = client_for("not-a-key")
    for _ in range(LIMIT + 2):
        assert stranger.get(ENTITLEMENTS).status_code == 401
        assert bad.get(ENTITLEMENTS).status_code == 401
    assert client_for(api_key).get(ENTITLEMENTS).status_code == 200


def test_the_public_schema_is_not_throttled(db):
    client = APIClient()
    for _ in range(LIMIT + 1):
        assert client.get("/api/schema/").status_code == 200


DOWN_CACHE = {
    "default": {
        # Nothing listens on port 1: every cache call fails at once with a connection error,
        # as when the production Redis is stopped.
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
    }
}


def test_the_limit_fails_open_when_the_cache_is_down(customer, api_key, settings):
    """Counting is best effort: without the cache the API keeps answering (unthrottled)
    rather than failing the business's checks."""
    settings.CACHES = DOWN_CACHE
    client = client_for(api_key)
    consume = f"{ENTITLEMENTS}/data-transfer/consume"
    for n in range(LIMIT + 2):
        response = client.post(consume, {"quantity": "1", "event_id": f"e-{n}"}, format="json")
        assert response.status_code == 200, response.content
        assert response.json()["allowed"] is True
