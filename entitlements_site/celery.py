"""The Celery app. With CELERY_BROKER_URL unset, tasks run in-process (settings)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "entitlements_site.settings")

app = Celery("entitlements_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
