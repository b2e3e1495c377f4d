"""The production web server: `gunicorn -c entitlements_site/gunicorn_prod.py` (docs/deploy.md).

`make bench` serves with this file too, so the figures in docs/performance.md are those of
this configuration. Every number can be set from the environment (below); the defaults are
the ones measured on the reference machine (2 cores).

- `WEB_WORKERS` (default 2 per core): processes, each with its own database connection per
  thread (persistent: `DB_CONN_MAX_AGE`, default 60 s).
- `WEB_WORKER_CLASS` (default gthread, as `entitlements_site.gunicorn_worker.BalancedThreadWorker`,
  which shares a client's burst of connections out among the workers instead of leaving
  them all with the first to wake) and `WEB_THREADS` (default 6): each worker serves
  six requests at once on threads, which overlaps one request's waits (its PostgreSQL and
  Redis round trips, the commit's flush to disk) with another's work, and keeps clients'
  connections alive between requests (a sync worker closes every connection after its
  answer, so each API call of a client pays a new TCP connection). Each thread holds a
  database connection of its own: the server holds up to WORKERS x THREADS of them.
  Measured at 2 workers, three alternating rounds on a busy machine (docs/performance.md,
  "sync or threads"): consumes spread over 1,000 customers 1.4-2.8 x as many per second as
  sync workers, one hot customer's 1.0-1.3 x, the floor 1.5-3.8 x; tails were longer.
  `WEB_WORKER_CLASS=sync` serves one request at a time per process. Six threads rather
  than four: with four, the consumes left a third of a core idle (their requests waiting
  for PostgreSQL and Redis at the same moments) and one customer's concurrent consumes
  shared fewer calls (customers/engine/combining.py); six gave one hot customer's consumes
  13-30% more a second and spread consumes about 5% more, the floor and the checks the same
  within the noise (docs/performance.md, "Third session of 2026-12-05"). `WEB_THREADS=4`
  holds a third fewer database connections.
- `WEB_BIND` (default `127.0.0.1:$PORT`, PORT 8000): behind the reverse proxy.
- `WEB_MAX_REQUESTS` (default 0: never) recycles a worker after that many requests (with a
  10% jitter): a bound on slow leaks, never needed for speed (docs/performance.md, "Decay").
"""

import multiprocessing
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "entitlements_site.settings")
os.environ.setdefault("DJANGO_DEBUG", "false")

wsgi_app = "entitlements_site.wsgi:application"
bind = os.environ.get("WEB_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}").split(",")
workers = int(os.environ.get("WEB_WORKERS", 2 * multiprocessing.cpu_count()))
# gthread with the connections shared out among the workers (gunicorn_worker.py)
worker_class = os.environ.get(
    "WEB_WORKER_CLASS", "entitlements_site.gunicorn_worker.BalancedThreadWorker"
)
threads = int(os.environ.get("WEB_THREADS", "6"))
backlog = 2048
timeout = 30
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
loglevel = os.environ.get("WEB_LOG_LEVEL", "info")
accesslog = os.environ.get("WEB_ACCESS_LOG") or None  # e.g. "-": one line per request
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
