"""The quick start's web server: what `make run` serves with (`gunicorn -c` this file).

gunicorn with threads (gthread, with the connections shared out among the workers:
gunicorn_worker.py), DEBUG off and a database connection per request. Production runs the
same workers with persistent connections instead (gunicorn_prod.py, docs/deploy.md,
`make bench`); this file is not read there.

Why these numbers: each thread that is inside a request holds at most one database connection
and closes it when the request ends (DB_CONN_MAX_AGE=0), so the web server never holds more
than WORKERS x THREADS = 16 connections, well under PostgreSQL's default max_connections of
100, and none once the requests are answered. Clients beyond 16 wait in the workers' accept
queues (up to `backlog` and `worker_connections`), so a burst of a hundred is answered in turn
rather than reset or refused.
"""

import os
import sys

# The quick start's environment, set before the workers import Django's settings (they are
# forked from this process and inherit it). An explicit value in the environment wins.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "entitlements_site.settings")
os.environ.setdefault("DJANGO_DEBUG", "false")
os.environ.setdefault("DB_CONN_MAX_AGE", "0")
# Served over plain HTTP on the loopback: cookies marked Secure would never come back.
os.environ.setdefault("DJANGO_SECURE_COOKIES", "false")

WORKERS = 2
THREADS = 8

wsgi_app = "entitlements_site.wsgi:application"
bind = [f"127.0.0.1:{os.environ.get('PORT', '8000')}"]
worker_class = "entitlements_site.gunicorn_worker.BalancedThreadWorker"  # gthread, shared out
workers = WORKERS
threads = THREADS
backlog = 2048
worker_connections = 1000
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = "-"
errorlog = "-"
# No runtime control socket: its default path is per user, shared by every gunicorn on the machine.
control_socket_disable = True


def on_starting(server) -> None:
    """Reads the settings once in the master before any worker starts, so that a missing
    secret key stops the server with its one-line reason instead of a worker boot loop."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        settings.SECRET_KEY  # noqa: B018 - reading it imports and checks the settings
    except ImproperlyConfigured as error:
        server.log.error("Refusing to start: %s", error)
        sys.exit(1)
