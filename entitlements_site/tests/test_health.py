"""/healthz (process alive) and /readyz (database, broker and cache reachable)."""

import os
import time
from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.test import override_settings

# Nothing listens there: connecting is refused at once.
DEAD_REDIS = "redis://127.0.0.1:6390/0"


@pytest.fixture
def anonymous(client):
    return client  # load balancers call the probes without credentials


def test_healthz_answers_without_touching_the_database(anonymous):
    # No django_db mark: any database access here fails the test.
    response = anonymous.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
@override_settings(CELERY_BROKER_URL="")
def test_readyz_is_ready_without_a_broker_when_tasks_run_in_process(anonymous):
    response = anonymous.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "not configured", "cache": "ok"},
    }
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
@override_settings(CELERY_BROKER_URL=DEAD_REDIS)
def test_readyz_is_unavailable_when_the_broker_is_unreachable(anonymous):
    started = time.monotonic()
    response = anonymous.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"database": "ok", "broker": "error", "cache": "ok"}
    assert body["unavailable"] == ["broker"]
    assert "6390" not in response.content.decode() and "Error" not in response.content.decode()
    assert time.monotonic() - started < 5, "a probe must answer within the balancer's timeout"


@pytest.mark.django_db
@pytest.mark.skipif(not os.environ.get("TEST_REDIS_URL"), reason="needs TEST_REDIS_URL (CI)")
def test_readyz_is_ready_when_the_broker_answers(anonymous):
    with override_settings(CELERY_BROKER_URL=os.environ["TEST_REDIS_URL"]):
        response = anonymous.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"]["broker"] == "ok"


@pytest.mark.django_db
@override_settings(CELERY_BROKER_URL="")
def test_readyz_is_unavailable_when_the_database_does_not_answer(anonymous):
    down = OperationalError("connection to server failed: Connection refused")
    with mock.patch.object(connection, "cursor", side_effect=down):
        response = anonymous.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "error" and body["unavailable"] == ["database"]
    assert "refused" not in response.content.decode()  # the details go to the log only
    assert body["checks"]["cache"] == "ok"


@pytest.mark.django_db
@override_settings(
    CELERY_BROKER_URL="",
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6390/2",
        }
    },
)
def test_readyz_is_unavailable_when_the_cache_is_unreachable(anonymous):
    response = anonymous.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {"database": "ok", "broker": "not configured", "cache": "error"}
    assert body["unavailable"] == ["cache"]
    assert "6390" not in response.content.decode()
