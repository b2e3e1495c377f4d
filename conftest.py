import pytest


@pytest.fixture(autouse=True)
def _outbox_and_cache(settings, tmp_path):
    """Each test gets Django's in-memory outbox and a clean cache."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    from django.core.cache import cache

    cache.clear()
    yield
