import pytest


@pytest.fixture(autouse=True)
def _outbox_cache_and_eager_tasks(request, settings):
    """Each test gets Django's in-memory outbox, a clean cache and Celery tasks run in-process.
    Tests marked `integration` talk to a real broker and worker instead."""
    from django.core.cache import cache

    from entitlements_site.celery import app as celery_app

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # A thread sending the ends of one test's writes must not meet the next test's Redis:
    # in-process tests send them before the answer (test_snapshot_ends.py tests the thread).
    settings.USAGE_SNAPSHOT_END_DEFERRED = False
    cache.clear()
    from customers.engine import caches_clear

    caches_clear()  # the engine's per-process caches: each test has its own database rows
    from core import key_changes
    from core.api_keys import api_keys_forget

    api_keys_forget()
    if "db" in request.fixturenames or "transactional_db" in request.fixturenames:
        key_changes.wait_listening()  # PostgreSQL: cached keys are trusted once it listens
    eager = request.node.get_closest_marker("integration") is None
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = eager
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture(scope="session", autouse=True)
def _api_key_listener_stopped(django_db_setup):
    """The API key change listener holds a connection to the test database: it is closed
    before the database is dropped."""
    yield
    from core import key_changes

    key_changes.listener_stop()
