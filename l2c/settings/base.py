"""Settings for every environment, read from environment variables.

No variables set gives the embedded default: SQLite in WAL mode, the local-memory cache and
django-q2's ORM broker, so the project runs with no server. ``DATABASE_URL`` switches to
PostgreSQL (psycopg 3), ``REDIS_URL`` to django-redis and django-q2's Redis broker.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from l2c.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    parse_database_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env_str("L2C_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)
TESTING = env_bool("L2C_TESTING", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not (DEBUG or TESTING):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
            "(set DJANGO_DEBUG=true for a local run)"
        )
    SECRET_KEY = "insecure-local-development-key-never-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI and ReDoc served from our own static files: the docs page loads no CDN.
    "drf_spectacular_sidecar",
    "django_q",
    "django_prometheus",
    "sagas",
    "inventory",
    "orders",
    "points",
    "payments",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # X-Correlation-ID in and out, and the JSON access log line of every /api/ request.
    "l2c.middleware.CorrelationIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "l2c.urls"
WSGI_APPLICATION = "l2c.wsgi.application"
ASGI_APPLICATION = "l2c.asgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    _db = parse_database_url(DATABASE_URL)
    _options = dict(_db.pop("OPTIONS"))
    if env_bool("DATABASE_POOL", False):
        # psycopg's pool, sized as in the order-payment design: 20 at most, 5 kept idle,
        # 30 s to get a connection, idle ones closed after 10 min, none older than 30 min.
        _options["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN_SIZE", 5),
            "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20),
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 30.0),
            "max_idle": env_float("DATABASE_POOL_MAX_IDLE", 600.0),
            "max_lifetime": env_float("DATABASE_POOL_MAX_LIFETIME", 1800.0),
        }
        _conn_max_age = 0  # the pool owns connection lifetime
    else:
        _conn_max_age = env_int("DATABASE_CONN_MAX_AGE", 60)
    DATABASES = {
        "default": {
            "ENGINE": "l2c.db_backends.postgresql",
            **_db,
            "OPTIONS": _options,
            "CONN_MAX_AGE": _conn_max_age,
            # A restarted PostgreSQL leaves dead persistent connections behind.
            "CONN_HEALTH_CHECKS": True,
        }
    }
    # The engine's and the order flow's hot statements are prepared once per connection
    # (l2c.db.execute); off behind a proxy that pools transactions rather than sessions.
    L2C_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
else:
    # SQLite cannot create the folder of its file; making it here saves a confusing
    # "unable to open database file" on a fresh checkout.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django_prometheus.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(VAR_DIR / "l2c.sqlite3")),
            "OPTIONS": {
                # WAL lets the web server read while a worker writes; IMMEDIATE takes the
                # write lock at BEGIN so two writers queue on busy_timeout instead of
                # failing with "database is locked" on lock upgrade.
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                    "PRAGMA busy_timeout=20000;"
                ),
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            "TEST": {"NAME": str(VAR_DIR / "test.sqlite3")},
        }
    }
DATABASE_VENDOR = "postgresql" if DATABASE_URL else "sqlite"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, locks and broker ----------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 2,
            },
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "l2c"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

Q_CLUSTER = {
    "name": env_str("Q_CLUSTER_NAME", "l2c"),
    "workers": env_int("Q_WORKERS", 2),
    # Tasks a worker runs before it is replaced by a fresh process (bounds memory growth).
    "recycle": env_int("Q_RECYCLE", 500),
    # A run_saga task runs a whole saga; delayed retries are scheduled, not slept, so the
    # longest task is bounded by the slowest step timeout plus the saga deadline margin.
    "timeout": env_int("Q_TIMEOUT", 300),
    # retry must exceed timeout, or a task still running is delivered a second time.
    "retry": env_int("Q_RETRY", 330),
    "max_attempts": 1,
    "ack_failures": True,
    # The saga tables are the record of what ran; keep only failed tasks in django-q2's.
    "save_limit": env_int("Q_SAVE_LIMIT", -1),
    "catch_up": False,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["django_redis"] = "default"
    # Pops up to this many waiting tasks per round trip to Redis (l2c.broker).
    Q_CLUSTER["broker_class"] = "l2c.broker.RedisBroker"
    Q_CLUSTER["bulk"] = env_int("Q_BULK", Q_CLUSTER["workers"])
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = 0.2

# The saga engine (sagas/conf.py lists every key and its default).
SAGAS = {
    "LEASE_SECONDS": env_float("SAGA_LEASE_SECONDS", 120.0),
    "LEASE_MARGIN_SECONDS": env_float("SAGA_LEASE_MARGIN_SECONDS", 30.0),
    "TIMER_POLL_SECONDS": env_float("SAGA_TIMER_POLL_SECONDS", 0.25),
    "STALE_AFTER_SECONDS": env_float("SAGA_STALE_AFTER_SECONDS", 60.0),
    "RECOVERY_INTERVAL_SECONDS": env_float("SAGA_RECOVERY_INTERVAL_SECONDS", 30.0),
    "TIMEOUT_CHECK_INTERVAL_SECONDS": env_float("SAGA_TIMEOUT_CHECK_INTERVAL_SECONDS", 60.0),
    "OUTBOX_RELAY_INTERVAL_SECONDS": env_float("OUTBOX_RELAY_INTERVAL_SECONDS", 5.0),
    "OUTBOX_CLAIM_SECONDS": env_float("OUTBOX_CLAIM_SECONDS", 120.0),
    "API_VISIBILITY": "orders.selectors.saga_visible_to",
}

# --- Auth, i18n, static ---------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/admin/login/"

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG and not TESTING)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# A request body over this size is refused before any view runs.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DJANGO_MAX_BODY_BYTES", 256 * 1024)

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "orders@l2c.example")

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "l2c.api.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "l2c.api.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["l2c.api.UserThrottle", "l2c.api.AnonThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_str("API_THROTTLE_USER", "6000/min"),
        "anon": env_str("API_THROTTLE_ANON", "60/min"),
        # POST /api/orders/ per user, on top of the user rate.
        "orders": env_str("API_THROTTLE_ORDERS", "600/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "L2C Sagas API",
    "DESCRIPTION": "Orders placed as sagas across inventory, points and payments.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Three models have a "status" field with their own choices; name each enum.
    "ENUM_NAME_OVERRIDES": {
        "OrderStatusEnum": "orders.models.Order.Status",
        "SagaStatusEnum": "sagas.models.SagaInstance.Status",
        "SagaStepStatusEnum": "sagas.models.SagaStep.Status",
    },
}

# --- Business settings ----------------------------------------------------------------------
# What one loyalty point is worth in the shop's currency.
POINTS_VALUE = Decimal(env_str("POINTS_VALUE", "0.01"))
CURRENCY = env_str("CURRENCY", "EUR")
# Reserved stock is released by the expiry sweep after this long [seed 000: 5 min].
RESERVATION_TTL_SECONDS = env_int("RESERVATION_TTL_SECONDS", 300)

PAYMENT_GATEWAY_URL = env_str("PAYMENT_GATEWAY_URL", "http://127.0.0.1:8001")
PAYMENT_GATEWAY_API_KEY = env_str("PAYMENT_GATEWAY_API_KEY", "sk_test_l2c")
PAYMENT_GATEWAY_TIMEOUT = env_float("PAYMENT_GATEWAY_TIMEOUT", 60.0)

# --- Logging --------------------------------------------------------------------------------
# LOG_FORMAT=json (the default unless DEBUG): one JSON object per line, with the fields of
# saga transitions ("sagas" loggers) and API requests ("l2c.request"); plain is for reading
# in a terminal. Every logger goes through the one console handler, so the output is uniform.
LOG_FORMAT = env_str("LOG_FORMAT", "plain" if DEBUG else "json")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use json or plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "l2c.logging.PlainFormatter"},
        "json": {"()": "l2c.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
    },
}
