"""The one settings module. Everything that differs between machines comes from the
environment (or a `.env` file beside manage.py); `.env.example` lists every variable.

With DEBUG off (production), every secret must be given: the process refuses to start and
names what is missing. With DEBUG on (`make run`, `make test`), local defaults apply.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import environ
from csp import constants as csp
from django.core.exceptions import ImproperlyConfigured

from plumbing.database import database_config

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)

_missing: list[str] = []


def _required(name: str, *, dev_default, cast=str):
    """A variable production must set; DEBUG runs fall back to `dev_default`."""
    if name in os.environ and os.environ[name] != "":
        return env.get_value(name, cast=cast)
    if DEBUG:
        return dev_default
    _missing.append(name)
    return dev_default


SECRET_KEY = _required("SECRET_KEY", dev_default="insecure-dev-key-only-for-debug-runs")
ALLOWED_HOSTS = _required(
    "ALLOWED_HOSTS", dev_default=["127.0.0.1", "localhost", "testserver"], cast=list
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# PostgreSQL only. `make run` and `make test` give one (an embedded server when the
# machine has none, see platform_site/localdb.py); other runs must name it.
DATABASE_URL = _required("DATABASE_URL", dev_default="")
if DATABASE_URL:
    DATABASES = {"default": database_config(DATABASE_URL, conn_max_age=env.int("CONN_MAX_AGE", 60))}
elif DEBUG:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. `make run` serves the demo on an embedded PostgreSQL and "
        "`make test` finds or starts one; for anything else set DATABASE_URL to a "
        "postgres:// URL (see .env.example)."
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Auth0 (through social-auth-app-django). The domain is the tenant's host name,
# e.g. "example.eu.auth0.com", without a scheme: Auth0 is always reached over https.
AUTH0_DOMAIN = _required("AUTH0_DOMAIN", dev_default="")
AUTH0_CLIENT_ID = _required("AUTH0_CLIENT_ID", dev_default="")
AUTH0_CLIENT_SECRET = _required("AUTH0_CLIENT_SECRET", dev_default="")

# Fernet keys for secrets at rest (cluster API keys, kubeconfigs), newest first,
# comma-separated; independent of SECRET_KEY. The DEBUG default is a public demo key.
FIELD_ENCRYPTION_KEYS = _required(
    "FIELD_ENCRYPTION_KEYS",
    dev_default=["ZGVtby1vbmx5LWtleS1uZXZlci11c2UtaW4tcHJvZCE="],
    cast=list,
)

# Hopsworks accounts: the OAuth client id Hopsworks knows our Auth0 application by
# (usually the same as AUTH0_CLIENT_ID), and the project quota of a new account.
HOPSWORKS_OAUTH_CLIENT_ID = env("HOPSWORKS_OAUTH_CLIENT_ID", default="") or AUTH0_CLIENT_ID
HOPSWORKS_MAX_NUM_PROJECTS = env.int("HOPSWORKS_MAX_NUM_PROJECTS", default=5)

# Stripe. Empty in the demo run: billing pages then say Stripe is not configured.
# STRIPE_API_BASE points the SDK elsewhere (tests); leave it empty in production.
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
# Auth0 log stream (Custom Webhook to /webhooks/auth0/, JSON Array): its Authorization
# Token is "Bearer <AUTH0_LOG_STREAM_TOKEN>". Empty: the endpoint is off. User deletions
# in Auth0 close the account (docs/operations.md "Closing an account").
AUTH0_LOG_STREAM_TOKEN = env("AUTH0_LOG_STREAM_TOKEN", default="")
AUTH0_LOG_STREAM_MAX_BYTES = env.int("AUTH0_LOG_STREAM_MAX_BYTES", default=1_000_000)
STRIPE_API_BASE = env("STRIPE_API_BASE", default="")
# Usage goes to Stripe on its v2 meter event stream (billing/stripe_reporting.py): its host
# (empty: https://meter-events.stripe.com; tests point it at the fake), its pace in requests
# a second per reporting run (0: Stripe's published limit, 10,000 live, 25 with a test key),
# and how many user-months a reporting batch takes (a constant number of queries each).
STRIPE_METER_EVENTS_API_BASE = env("STRIPE_METER_EVENTS_API_BASE", default="")
STRIPE_METER_STREAM_REQUESTS_PER_SECOND = env.float(
    "STRIPE_METER_STREAM_REQUESTS_PER_SECOND", default=0
)
STRIPE_REPORT_BATCH_SIZE = env.int("STRIPE_REPORT_BATCH_SIZE", default=500)
STRIPE_CURRENCY = "usd"
# Outbound calls to Hopsworks, Kubernetes (OpenCost) and Stripe (plumbing/outbound.py). With
# DEBUG off they go to public https addresses only; the hosts named here may also be on a
# private network (an internal cluster), comma-separated host names.
OUTBOUND_ALLOWED_HOSTS = env.list("OUTBOUND_ALLOWED_HOSTS", default=[])
# DEBUG runs (make run, the tests) may also call this machine, over http too. Never settable
# on its own: production cannot turn it on without DEBUG.
OUTBOUND_ALLOW_LOCAL = DEBUG
# Total seconds (connect, every read, retries) for the outside calls of one action inside a
# web request (a login's account sync, a checkout, a connection test): keep it well below
# gunicorn's timeout (gunicorn.conf.py). Management commands get the longer deadline per call.
OUTBOUND_DEADLINE_SECONDS = env.float("OUTBOUND_DEADLINE_SECONDS", default=10.0)
OUTBOUND_BACKGROUND_DEADLINE_SECONDS = env.float(
    "OUTBOUND_BACKGROUND_DEADLINE_SECONDS", default=60.0
)
# The longest answer read from an outside system, in bytes.
OUTBOUND_MAX_RESPONSE_BYTES = env.int("OUTBOUND_MAX_RESPONSE_BYTES", default=5 * 1024 * 1024)
# OpenCost's answer for a day grows with the cluster's namespaces (about 1 KB each: 20,000
# namespaces are ~20 MB), so it has a limit of its own: 512 MiB, ~500,000 namespaces.
OPENCOST_MAX_RESPONSE_BYTES = env.int("OPENCOST_MAX_RESPONSE_BYTES", default=512 * 1024 * 1024)
# Credit top-ups: preset amounts and the limits of a custom amount, in US dollars.
CREDIT_TOPUP_PRESETS = env.list("CREDIT_TOPUP_PRESETS", default=["10", "25", "50", "100"])
CREDIT_TOPUP_MIN = env("CREDIT_TOPUP_MIN", default="5")
CREDIT_TOPUP_MAX = env("CREDIT_TOPUP_MAX", default="1000")
# The most one operator credit or debit (admin "Grant credits" / "Debit") may be, US dollars.
BILLING_ADJUSTMENT_MAX = env("BILLING_ADJUSTMENT_MAX", default="10000")

# Admin exports (CSV, XLSX) read the database and write the file this many rows at a time,
# so a large export never holds more than one chunk in memory (plumbing/admin_export.py).
EXPORT_CHUNK_SIZE = env.int("EXPORT_CHUNK_SIZE", default=2000)

# Set only by `make run`, on the local database it made for the demo: the one database
# seed_demo (a known admin password) may write to. Never set it anywhere else.
DEMO_DATABASE = env.bool("DEMO_DATABASE", default=False)

# Users are placed on a cluster only once their billing is set up (postpaid: an active
# subscription; prepaid: a positive balance). Operators can always place anyone by hand.
PLACEMENT_REQUIRES_BILLING = env.bool("PLACEMENT_REQUIRES_BILLING", default=True)
# Who decides whether a user may be placed automatically (clusters asks; billing answers).
PLACEMENT_GATE = "billing.gate.placement_blocker"

# Spending limits and what happens when money runs out (billing.limits, issue 13).
# Postpaid: the monthly cap every user has unless an operator or the user sets their own;
# users may set their own between 0 and SPENDING_CAP_USER_MAX, operators up to
# SPENDING_CAP_OPERATOR_MAX. Prepaid: warn below the threshold; stop below the floor.
SPENDING_CAP_DEFAULT = env("SPENDING_CAP_DEFAULT", default="1000")
SPENDING_CAP_USER_MAX = env("SPENDING_CAP_USER_MAX", default="10000")
SPENDING_CAP_OPERATOR_MAX = env("SPENDING_CAP_OPERATOR_MAX", default="1000000")
LOW_BALANCE_THRESHOLD_DEFAULT = env("LOW_BALANCE_THRESHOLD_DEFAULT", default="10")
PREPAID_BALANCE_FLOOR = env("PREPAID_BALANCE_FLOOR", default="0")
# How long a user keeps their cluster after they became ineligible (0: stopped at once),
# and after a failed invoice payment (Stripe's retries run meanwhile).
SERVICE_STOP_GRACE_HOURS = env.int("SERVICE_STOP_GRACE_HOURS", default=24)
DUNNING_GRACE_HOURS = env.int("DUNNING_GRACE_HOURS", default=72)
# Who decides whether a user's Hopsworks account may be active (clusters asks; billing
# answers with the reason it must be deactivated, or None).
ACCOUNT_ACCESS_GATE = "billing.gate.access_blocker"

# Mail to users (alerts, dunning) goes through Django's email backend, from EMAIL_URL
# (smtp+tls://user:password@host:587, or consolemail:// to print it: `make run` and DEBUG).
# Mail is sent by jobs, never in a web request; EMAIL_TIMEOUT bounds each socket operation
# and EMAIL_DEADLINE_SECONDS a whole send (a server answering a byte at a time).
vars().update(
    env.email_url("EMAIL_URL", default="consolemail://" if DEBUG else "smtp://localhost:25")
)
if EMAIL_BACKEND == "django.core.mail.backends.smtp.EmailBackend":  # noqa: F821 - set above
    # Django's, with one deadline for a whole send (plumbing/mail.py).
    EMAIL_BACKEND = "plumbing.mail.DeadlineEmailBackend"
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
EMAIL_DEADLINE_SECONDS = env.float("EMAIL_DEADLINE_SECONDS", default=30.0)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="billing@localhost")
# Where users reach the console: links in mail to them (spending alerts) start with it.
CONSOLE_URL = env("CONSOLE_URL", default="http://localhost:8000")

# The unit storage is billed in: GiB (2^30 bytes; Kubernetes sizes volumes in Gi, and the
# clouds bill GB-months of 2^30 bytes) or GB (10^9 bytes). Stated on the rate card.
STORAGE_UNIT = env.str("STORAGE_UNIT", default="GiB")
if STORAGE_UNIT not in ("GiB", "GB"):
    raise ImproperlyConfigured(f"STORAGE_UNIT is {STORAGE_UNIT!r}; use GiB or GB.")

# Background jobs (Procrastinate): each app's tasks.py is found by itself; plumbing's jobs
# (the watch over dead workers) are named. Workers: `python manage.py worker`.
PROCRASTINATE_IMPORT_PATHS = ["plumbing.jobs"]
PROCRASTINATE_WORKER_DEFAULTS = {"install_signal_handlers": True}
# A worker starting late still queues a periodic job overdue by at most this many seconds.
PROCRASTINATE_PERIODIC_DEFAULTS = {"max_delay": env.float("JOBS_PERIODIC_MAX_DELAY", default=600)}
# Usage collection catches up on every cluster-day missing, failed or left running by a
# dead worker within this many days.
USAGE_COLLECTION_LOOKBACK_DAYS = env.int("USAGE_COLLECTION_LOOKBACK_DAYS", default=35)
# A collection run still "running" after this long was left by a dead worker.
USAGE_COLLECTION_LEASE_MINUTES = env.int("USAGE_COLLECTION_LEASE_MINUTES", default=30)

if _missing:
    raise ImproperlyConfigured(
        "DEBUG is off, so these environment variables must be set: "
        + ", ".join(_missing)
        + ". See .env.example for what each one holds."
    )

INSTALLED_APPS = [
    # django.contrib.admin, its site keeping the app list per permission set.
    "plumbing.admin_site.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "social_django",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "procrastinate.contrib.django",
    "axes",
    "csp",
    "rangefilter",  # the from-to date filter of the admin lists (plumbing/admin_ranges.py)
    # Our apps, bottom up; imports go console -> billing -> clusters -> accounts (all may
    # import plumbing, which is not an app: it has no models).
    "accounts",
    "clusters",
    "billing",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "accounts.middleware.RejectNullBytesMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.InactiveUserLogoutMiddleware",
    "accounts.middleware.OperatorSessionIdleTimeoutMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out password login into its page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "platform_site.urls"
WSGI_APPLICATION = "platform_site.wsgi.application"

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
                "accounts.context_processors.auth0_login",
                "billing.context_processors.units",
            ],
            # money, precise_money and quantity in every template, without {% load %};
            # list_count (a list's count, "about ..." when estimated) in the admin's;
            # fast_result_list (an admin list's rows, plumbing.admin_rows) in its lists.
            "builtins": ["plumbing.formatting", "plumbing.admin_lists", "plumbing.admin_rows"],
        },
    },
]

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First, so a locked-out password login is refused before the password is checked.
    "axes.backends.AxesStandaloneBackend",
    "accounts.auth0.Auth0Backend",
    # Break-glass login for operators with a local password (createsuperuser).
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Repeated failed password logins (the break-glass login at /admin/login/) lock out the
# account, and separately the address, for a cool-off (django-axes, counted in the
# database). Attempts during a lockout are not counted, so it ends COOL-OFF after the last
# counted failure however long someone keeps trying: guesses are held to the limit per
# cool-off without an attacker being able to lock an operator out for good.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Only the admin's password login: the Auth0 login (its own brute-force protection at
# Auth0) is never locked by failures here.
AXES_ONLY_ADMIN_SITE = True
AXES_USERNAME_FORM_FIELD = "username"  # what the admin's login form posts
AXES_USERNAME_CALLABLE = "accounts.lockout.username"
AXES_CLIENT_IP_CALLABLE = "plumbing.client_address.client_address"
AXES_LOCKOUT_CALLABLE = "accounts.lockout.locked_out"
# Logins are counted on users (login_count, last_login_at); no second log of them.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

SOCIAL_AUTH_AUTH0_DOMAIN = AUTH0_DOMAIN
SOCIAL_AUTH_AUTH0_KEY = AUTH0_CLIENT_ID
SOCIAL_AUTH_AUTH0_SECRET = AUTH0_CLIENT_SECRET
SOCIAL_AUTH_AUTH0_SCOPE = ["openid", "profile", "email"]
SOCIAL_AUTH_REQUIRE_POST = True
SOCIAL_AUTH_JSONFIELD_ENABLED = True
SOCIAL_AUTH_ACTIVE_USERS_FILTER = {"status": "active"}
SOCIAL_AUTH_REQUESTS_TIMEOUT = 10
SOCIAL_AUTH_REDIRECT_IS_HTTPS = env.bool("SOCIAL_AUTH_REDIRECT_IS_HTTPS", default=not DEBUG)
SOCIAL_AUTH_LOGIN_ERROR_URL = "/login/"
# social-auth's own user steps are replaced by ours: the user's primary key is the Auth0
# `sub`, an email owned by another id is refused, suspended users are refused.
SOCIAL_AUTH_PIPELINE = (
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_uid",
    "social_core.pipeline.social_auth.auth_allowed",
    "accounts.pipeline.sync_user",
    "social_core.pipeline.social_auth.social_user",
    "social_core.pipeline.social_auth.associate_user",
    "social_core.pipeline.social_auth.load_extra_data",
)

# The API for scripts (/api/v1/): API keys or the browser session, one error format,
# throttling per key, an OpenAPI schema.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api_auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "plumbing.api.Pagination",
    "DEFAULT_PARSER_CLASSES": ["plumbing.api.StrictJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["plumbing.api.PerKeyThrottle"],
    "DEFAULT_THROTTLE_RATES": {"per_key": env("API_RATE_LIMIT", default="600/minute")},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "plumbing.api.error_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hopsworks Platform Console API",
    "DESCRIPTION": "For scripts: users, clusters, assignments and usage. Authenticate with "
    "`Authorization: Api-Key <key>` (keys are made in the admin or with "
    "`manage.py create_api_key`), or the browser session for your own data (/me). "
    'Amounts are US dollars as exact decimal strings ("2.834002"; the console shows it '
    'as $2.83), quantities likewise; times are ISO 8601 in UTC ("2026-12-05T19:44:00Z").',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No badge from validator.swagger.io: it would send our schema's address there (and
    # the policy below allows no outside images).
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Datetimes say their zone everywhere ("2026-12-05 19:44 UTC"): platform_site/formats.
FORMAT_MODULE_PATH = ["platform_site.formats"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Files served at the site's root by WhiteNoise: /favicon.ico, which browsers ask for.
WHITENOISE_ROOT = BASE_DIR / "platform_site" / "root"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# Operators (is_staff) are logged out after this long without a request (a working day);
# users keep Django's SESSION_COOKIE_AGE (two weeks).
OPERATOR_SESSION_IDLE_SECONDS = env.int("OPERATOR_SESSION_IDLE_SECONDS", default=8 * 3600)
# The idle expiry moves at most this often (a session write and commit per page otherwise),
# so an idle operator's session ends up to this much before OPERATOR_SESSION_IDLE_SECONDS.
OPERATOR_SESSION_REFRESH_SECONDS = 60
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
# How many proxies of ours sit in front of the app (0: none). Only then are
# X-Forwarded-Proto (is the request https?) and X-Forwarded-For (who is the client?)
# believed; otherwise a client could claim either.
TRUSTED_PROXY = env.int("TRUSTED_PROXY", default=0)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUSTED_PROXY else None
# Plain http is redirected to https only where the scheme can be known (behind a trusted
# proxy): without one every request would look like http and redirect forever. Health
# checks from the load balancer may come over plain http.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=bool(TRUSTED_PROXY) and not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
# HSTS: browsers use only https for a year once they have seen the console over https.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp). Scripts: only our own files, and inline scripts
# that carry the response's nonce (the API docs' start-up script,
# templates/drf_spectacular/swagger_ui.html), so injected markup cannot run script.
# Styles allow inline: the admin and Swagger UI write style attributes and <style>
# blocks we do not control, and a nonce in style-src would turn 'unsafe-inline' off.
# img-src data: is Swagger UI's icons. No form-action: forms here end in redirects to
# Auth0 and Stripe's hosted pages, which Chromium checks against it.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp.SELF],
        "script-src": [csp.SELF, csp.NONCE],
        "style-src": [csp.SELF, csp.UNSAFE_INLINE],
        "img-src": [csp.SELF, "data:"],
        "font-src": [csp.SELF],
        "connect-src": [csp.SELF],
        "object-src": [csp.NONE],
        "base-uri": [csp.NONE],
        "frame-ancestors": [csp.NONE],
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Its start-up lines (each periodic task registered) say nothing an operator needs.
        "procrastinate.periodic": {"level": "WARNING"},
        "procrastinate.blueprints": {"level": "WARNING"},
        # The Stripe SDK logs two INFO lines per request: thousands a usage report (one per
        # 100 meter events). billing.stripe_gateway reports failures itself.
        "stripe": {"level": "WARNING"},
    },
}
