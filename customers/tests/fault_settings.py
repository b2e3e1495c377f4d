"""Settings of the Celery workers the fault tests start: the project's settings, with mail sent
through `slow_mail` (settings choose the backend from EMAIL_URL, whose schemes cannot name a
custom backend) and, when FAULT_VISIBILITY_SECONDS is set, a short Redis visibility timeout so
that a message left unacknowledged by a killed worker is delivered again within the test."""

import os

from entitlements_site.settings import *  # noqa: F403
from entitlements_site.settings import CELERY_BROKER_TRANSPORT_OPTIONS

EMAIL_BACKEND = "customers.tests.slow_mail.EmailBackend"

if os.environ.get("FAULT_VISIBILITY_SECONDS"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        **CELERY_BROKER_TRANSPORT_OPTIONS,
        "visibility_timeout": float(os.environ["FAULT_VISIBILITY_SECONDS"]),
        # Look for such messages every second (kombu's default: every 100 s).
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
