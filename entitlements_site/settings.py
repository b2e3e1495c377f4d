"""One settings module, configured from the environment (DESIGN.md "Running").

Defaults are the embedded ones: SQLite in the project, tasks run in-process, mail written to
var/outbox. Production sets DATABASE_URL, CELERY_BROKER_URL, CACHE_URL, DJANGO_SECRET_KEY,
DJANGO_DEBUG=false and DJANGO_ALLOWED_HOSTS.

DEBUG defaults to on, for `make dev`, management commands and the test suite: tests import
these settings with DEBUG on (a development key, plain static files, so no `collectstatic`),
and pytest-django then answers requests with DEBUG off, so they see the production error
pages. `make run` (entitlements_site/gunicorn_conf.py) and production turn it off.
"""

import re
from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from core.client_ip import trusted_proxies

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=True)
DEVELOPMENT_SECRET_KEY = "dev-only-insecure-key-change-me-in-production"


def _secret_key() -> str:
    """DJANGO_SECRET_KEY, else the key file that `make run` writes once (git-ignored), else,
    with DEBUG on only, a development key. The development key is in the repository, so anyone
    could sign a cookie with it: with DEBUG off the server refuses to start instead."""
    key = env.str("DJANGO_SECRET_KEY", default="").strip()
    path = Path(env.str("DJANGO_SECRET_KEY_FILE", default=str(VAR_DIR / "secret_key")))
    if not key and path.is_file():
        key = path.read_text().strip()
    if key and key != DEVELOPMENT_SECRET_KEY:
        return key
    if DEBUG:
        return DEVELOPMENT_SECRET_KEY
    raise ImproperlyConfigured(
        "DJANGO_DEBUG is off and no secret key is configured: set DJANGO_SECRET_KEY to 50+ "
        "random characters (python3 -c 'import secrets; print(secrets.token_urlsafe(50))') "
        f"or write one to {path} (`make run` does). The development key is refused."
    )


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "djmoney",
    "simple_history",
    "django_celery_beat",
    "csp",
    "axes",
    "core",
    "entitlements_site",
    "catalog",
    "customers",
    "billing",
    "support",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "entitlements_site.middleware.UnstorableInputMiddleware",  # NUL bytes: 400, never a 500
    "core.hot.HotPathMiddleware",  # the hot API paths skip the page middleware
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "entitlements_site.middleware.NoStoreMiddleware",  # signed-in pages: Cache-Control no-store
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # Last, as Axes asks: turns a refused sign-in into the lockout page (lockout.py).
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked username and address before any password is checked.
    "entitlements_site.lockout.LoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "entitlements_site.urls"
WSGI_APPLICATION = "entitlements_site.wsgi.application"
ASGI_APPLICATION = "entitlements_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "entitlements_site.context_processors.roles",
            ],
        },
    },
]

# Database: PostgreSQL in production and CI, a SQLite file as the embedded default.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock at BEGIN, so concurrent writers queue instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 30}
    )
else:
    # Persistent connections suit gunicorn's sync workers (one per worker, docs/deploy.md).
    # A server with a thread per request must not keep them: `make run` and `make dev` set
    # DB_CONN_MAX_AGE=0, a connection per request, closed when the request ends.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"]["TEST"] = {"NAME": env.str("DATABASE_TEST_NAME", default=None)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://entitlements")}
# The hot path's Redis (API rate limit, usage snapshots): the cache's, unless set apart.
_cache_is_redis = CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
HOT_REDIS_URL = env.str(
    "HOT_REDIS_URL", default=CACHES["default"]["LOCATION"] if _cache_is_redis else ""
)
# false: a consume answers without waiting for its commit to reach the disk (PostgreSQL's
# synchronous_commit off for that transaction): faster, and a database crash may forget the
# last moment's consumes (never half of one). See docs/performance.md.
USAGE_SYNCHRONOUS_COMMIT = env.bool("USAGE_SYNCHRONOUS_COMMIT", default=True)
# The consume's call is a prepared statement of each PostgreSQL connection (planned once per
# connection). false behind a pooler in transaction mode that does not keep prepared
# statements (PgBouncer before 1.21, or with max_prepared_statements = 0).
USAGE_PREPARED_STATEMENTS = env.bool("USAGE_PREPARED_STATEMENTS", default=True)
# Usage batches take turns per bucket of customers before locking counters (0: they do not).
USAGE_BATCH_TURNS = env.int("USAGE_BATCH_TURNS", default=64)
# Checks answered from usage snapshots mirrored in that Redis (customers/snapshots.py).
USAGE_SNAPSHOTS = env.bool("USAGE_SNAPSHOTS", default=True)
# A write's end in that protocol is sent just after its answer, with the others due, by a
# thread of each process (false: before the answer, one round trip per write).
USAGE_SNAPSHOT_END_DEFERRED = env.bool("USAGE_SNAPSHOT_END_DEFERRED", default=True)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Mail: EMAIL_URL (smtp://user:pass@host:587, consolemail://) or, by default, one file per
# message in var/outbox, so that the demo's emails can be read.
if "EMAIL_URL" in env:
    vars().update(env.email_url("EMAIL_URL"))
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(VAR_DIR / "outbox"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Entitlements <noreply@localhost>")
# The links in emails. `make run` and `make dev` serve on 127.0.0.1:$PORT: links follow it.
SITE_URL = env.str("SITE_URL", default=f"http://127.0.0.1:{env.str('PORT', default='8000')}")
# Seconds a portal link (POST /api/v1/customers/{id}/portal-sessions) may be opened, once.
PORTAL_SESSION_TTL = env.int("PORTAL_SESSION_TTL", default=300)
# Origins (scheme://host[:port], comma-separated) whose pages may frame the compact usage page
# /dashboard/embed/ (CSP frame-ancestors). None by default: every page refuses to be framed.
DASHBOARD_EMBED_ORIGINS = env.list("DASHBOARD_EMBED_ORIGINS", default=[])
for _origin in DASHBOARD_EMBED_ORIGINS:
    if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", _origin):
        raise ImproperlyConfigured(
            f"DASHBOARD_EMBED_ORIGINS: {_origin!r} is not an origin (https://host[:port])."
        )

# The outbox (core/outbox.py): how long a usage alert email or a webhook delivery may stay
# pending before the sweep queues it again (the task queued on commit goes first), and how
# long after it was recorded one still failing is marked failed (the admin can resend it).
NOTIFICATION_SWEEP_DELAY_SECONDS = 120
NOTIFICATION_GIVE_UP_AFTER_SECONDS = 86400  # a day
WEBHOOK_SWEEP_DELAY_SECONDS = 120
WEBHOOK_GIVE_UP_AFTER_SECONDS = 3 * 86400  # three days
# Seconds a webhook receiver has to answer one POST.
WEBHOOK_TIMEOUT_SECONDS = 5

# Money
CURRENCIES = ("USD", "EUR", "GBP")
DEFAULT_CURRENCY = "USD"

# Payments (docs/payments.md). The provider charging every invoice at issue: a dotted path to a
# class of billing.providers' interface. The built-in one records each charge as paid (money is
# collected outside this system); `billing.providers.TestPaymentProvider` declines on demand.
BILLING_PAYMENT_PROVIDER = env.str(
    "BILLING_PAYMENT_PROVIDER", default="billing.providers.BuiltinPaymentProvider"
)
# The test provider declines the customers listed here (external ids, comma-separated; `*`
# for everyone): flip it to try dunning end to end.
BILLING_TEST_PROVIDER_DECLINE = env.list("BILLING_TEST_PROVIDER_DECLINE", default=[])
# Days an invoice may stay unpaid after its issue (its due date); past that the subscription
# is past due.
BILLING_GRACE_DAYS = env.int("BILLING_GRACE_DAYS", default=7)
# Hours between two tries of a declined charge (beat's "Retry failed payments" runs every
# 15 minutes and retries the invoices due); the customer is emailed after each decline.
BILLING_PAYMENT_RETRY_HOURS = env.int("BILLING_PAYMENT_RETRY_HOURS", default=24)
# What a past-due subscription does to access: "keep" (entitlements unchanged while the
# payment is chased) or "deny" (every check answers has_access false and every consume is
# refused with reason `payment_overdue` until the invoice is paid).
BILLING_PAST_DUE_ACCESS = env.str("BILLING_PAST_DUE_ACCESS", default="keep")
if BILLING_PAST_DUE_ACCESS not in ("keep", "deny"):
    raise ImproperlyConfigured("BILLING_PAST_DUE_ACCESS is `keep` or `deny`.")
# The seller's details printed on every invoice.
BILLING_SELLER = {
    "name": env.str("BILLING_SELLER_NAME", default="Entitlements Inc."),
    "address": env.str("BILLING_SELLER_ADDRESS", default="1 Example Street\nSpringfield"),
    "email": env.str("BILLING_SELLER_EMAIL", default="billing@localhost"),
    "tax_id": env.str("BILLING_SELLER_TAX_ID", default=""),
}

# Celery: Redis in production; without a broker, tasks run in-process (eagerly).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing gives up within about a second when the broker is down, three when it hangs (a
# try, a reconnect and a retry, each waiting socket_timeout; Redis answers in well under a
# millisecond): the outbox row stays pending and a sweep queues it later, so the web request
# still succeeds. (Workers wait for tasks with BRPOP in their event loop, not bound by it.)
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 1}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# API
# The hot endpoints answer through core.hot (no DRF, no page middleware).
API_LEAN_VIEWS = env.bool("API_LEAN_VIEWS", default=True)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["core.api_keys.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["core.api_keys.HasApiKey"],
    "DEFAULT_THROTTLE_CLASSES": ["core.api_keys.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": env.str("API_RATE_LIMIT", default="20000/min")},
    "DEFAULT_RENDERER_CLASSES": ["core.api.FastJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "core.api.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.openapi.ApiAutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["core.pagination.StrictFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "COERCE_DECIMAL_TO_STRING": True,
    "DATETIME_FORMAT": "iso-8601",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Entitlements API",
    "DESCRIPTION": "Check, consume and report usage of entitlements; manage the catalog.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several representations have a `status`: each set of choices gets its own name.
    "ENUM_NAME_OVERRIDES": {"PlanVersionStatusEnum": "catalog.models.VersionStatus"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.openapi.error_schema_hook",
    ],
}

# Security (hardened further under DJANGO_DEBUG=false)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy (django-csp): scripts from this site only (htmx and the pages' own
# .js are static files; no template has an inline script or on* handler). Styles may be
# inline: the usage bars set their width in a style attribute, htmx adds its indicator <style>
# and the admin and API docs have a few.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
# Login lockout (django-axes, wired in entitlements_site/lockout.py): 10 failed sign-ins for
# one username from one client address lock that pair for 15 minutes from the last failure;
# the owner still signs in from any other address, and other users from this one. Counted in
# the database, so every web process agrees; a success resets the pair. Both login pages
# (ours and the admin's). Support unlocks with `manage.py axes_reset_username NAME`.
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = 10
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_RESET_ON_SUCCESS = True
# A refused attempt is not counted again: the cool-off runs from the tenth failure, so "try
# again in N minutes" holds, and retrying while locked does not push the unlock further away.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_CLIENT_IP_CALLABLE = "core.client_ip.client_ip"
AXES_LOCKOUT_CALLABLE = "entitlements_site.lockout.lockout_response"
# No row per successful sign-in (portal links sign customers in all day); failures only.
AXES_DISABLE_ACCESS_LOG = True
# The reverse proxies whose X-Forwarded-For is believed (IPs or CIDRs, comma-separated; none
# by default: the app server's peer is the client). See core/client_ip.py.
TRUSTED_PROXIES = env.list("DJANGO_TRUSTED_PROXIES", default=[])
trusted_proxies(tuple(TRUSTED_PROXIES))  # a malformed entry stops the start, not a sign-in
# DJANGO_PROXY_COUNT (replaced by DJANGO_TRUSTED_PROXIES) believed the header from whoever
# connected. Ignoring it silently would count every client behind the proxy as one address;
# a deployment that set it is told what to set instead.
if env.int("DJANGO_PROXY_COUNT", default=0) and not TRUSTED_PROXIES:
    raise ImproperlyConfigured(
        "DJANGO_PROXY_COUNT is no longer read: set DJANGO_TRUSTED_PROXIES to the addresses "
        "of your reverse proxies (docs/deploy.md) and remove DJANGO_PROXY_COUNT."
    )
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
    CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
    # Load balancers probe the web processes over plain HTTP: the probes answer, not redirect.
    SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz)$"]
    SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
