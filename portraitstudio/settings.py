"""Settings for Portrait Studio, all from environment variables.

Defaults are the embedded configuration: SQLite, django-q2's ORM broker,
media on local disk, no vendor keys. See README.md for the table.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from portraitstudio.env import (
    env_bool,
    env_email_url,
    env_int,
    env_list,
    env_secret,
    env_str,
    env_url,
    local_secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("STUDIO_DATA_DIR", str(BASE_DIR / "data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY") or local_secret_key(DATA_DIR)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# The address users (and vendors fetching our signed URLs) reach this site at.
STUDIO_PUBLIC_URL = env_url("STUDIO_PUBLIC_URL", "http://127.0.0.1:8000")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [STUDIO_PUBLIC_URL])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "django_q",
    # Accounts: sign-up and log-in by e-mail, verification, password reset (studio/accounts.py).
    "allauth",
    "allauth.account",
    "studio",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "studio.security.SecurityHeadersMiddleware",  # CSP, Permissions-Policy
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    # Runs before any view phase reads the body (CSRF reads POST in process_view).
    "studio.security.RequestSizeLimitMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "portraitstudio.urls"
WSGI_APPLICATION = "portraitstudio.wsgi.application"

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
                "studio.context_processors.studio",
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'studio.sqlite3'}")
try:
    # Connections are kept for a minute: opening one (SQLite runs its PRAGMAs
    # and registers its functions each time) cost more than a whole status
    # poll (bench/status_endpoint.py). 0 closes each one after its request.
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0))
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL Django understands: {exc}") from exc
_sqlite = _db["ENGINE"] == "django.db.backends.sqlite3"
if _sqlite:
    # Several web and worker processes share one file. WAL lets readers run
    # beside the writer; IMMEDIATE takes the write lock at BEGIN, so a
    # read-then-write transaction waits instead of failing "database is locked".
    # Our subclass of Django's backend: a process's threads queue for the write lock in
    # the process, not in SQLite's sleeping busy handler (portraitstudio/sqlite/base.py).
    _db["ENGINE"] = "portraitstudio.sqlite"
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so that a real qcluster process started by a test
    # can open the test database too.
    # One file per test run, so overlapping runs never share (and flush) it.
    _db["TEST"] = {"NAME": env_str("STUDIO_TEST_DB", str(DATA_DIR / f"test-studio-{os.getpid()}.sqlite3"))}
else:
    # A persistent connection may have been dropped by the server (restart,
    # idle timeout); check it before reusing it in a new request.
    _db["CONN_HEALTH_CHECKS"] = True
    if _db["ENGINE"] == "django.db.backends.postgresql":
        # An unreachable server fails fast (?connect_timeout= in the URL overrides).
        _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # One test database per test run here too: Django's default "test_<name>"
    # would be shared, and destroyed, by two runs on one server.
    _db["TEST"] = {"NAME": env_str("STUDIO_TEST_DB", f"test_{_db['NAME']}_{os.getpid()}")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ----------------------------------------------------------------
# Shared by every web and worker process (vendor tokens, the Perfect Corp
# request budget, abuse limits), so it never lives in process memory: in the
# database by default, in Redis when REDIS_URL is set (Redis then carries the
# job queue too).
REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL must start with redis://, rediss:// or unix://, not {REDIS_URL!r}")
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's RedisCache, except that clear() leaves the job queue alone.
            "BACKEND": "studio.cache.RedisCache",
            "LOCATION": REDIS_URL,
            # Several sites (or test runs) can share one Redis database.
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", ""),
            # An unreachable Redis fails a request (and /healthz) in seconds, not minutes.
            "OPTIONS": {"socket_connect_timeout": 5, "socket_timeout": 5},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "studio_cache",
            "OPTIONS": {"MAX_ENTRIES": 20000},
        }
    }

# --- Files ----------------------------------------------------------------
MEDIA_ROOT = DATA_DIR / "media"
# Media is never served from a public path; views check ownership first.
MEDIA_URL = "/media-not-public/"
STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Photos and results on S3-compatible storage when a bucket is named. Objects
# stay private (no ACL: the bucket's own, private by default); after the
# ownership check a view redirects the browser to a signed URL that expires
# after STUDIO_MEDIA_URL_SECONDS (studio/media.py).
AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME", "")
STUDIO_MEDIA_URL_SECONDS = env_int("STUDIO_MEDIA_URL_SECONDS", 300, minimum=10, maximum=7 * 24 * 3600)
if AWS_STORAGE_BUCKET_NAME:
    from botocore.config import Config as BotoConfig

    _addressing = env_str("AWS_S3_ADDRESSING_STYLE", "auto")
    if _addressing not in ("auto", "path", "virtual"):
        raise ImproperlyConfigured(f"AWS_S3_ADDRESSING_STYLE must be auto, path or virtual, not {_addressing!r}")
    _media_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            # Empty means AWS itself; any S3-compatible service otherwise.
            "endpoint_url": env_url("AWS_S3_ENDPOINT_URL", "") or None,
            # Empty keys leave boto3 to its own chain (instance role, ~/.aws).
            "access_key": env_secret("AWS_ACCESS_KEY_ID", "") or None,
            "secret_key": env_secret("AWS_SECRET_ACCESS_KEY", "") or None,
            "region_name": env_str("AWS_S3_REGION_NAME", "") or None,
            "location": env_str("AWS_LOCATION", ""),
            # Signature v4 (all regions and S3-compatible services take it);
            # short timeouts, so an unreachable bucket fails fast.
            "client_config": BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": _addressing},
                connect_timeout=5,
                read_timeout=30,
                retries={"mode": "standard", "max_attempts": 3},
            ),
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": STUDIO_MEDIA_URL_SECONDS,
            # A new upload never replaces another object that has its name.
            "file_overwrite": False,
        },
    }
else:
    _media_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _media_storage,
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Uploads: the photo limit is enforced by the ingest code with a friendly
# message; these keep a hostile request from filling memory first.
STUDIO_MAX_UPLOAD_MB = env_int("STUDIO_MAX_UPLOAD_MB", 25, minimum=1, maximum=200)
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024

# --- Accounts (django-allauth; studio/accounts.py) ----------------------------
# People sign up and log in with their e-mail address (no user name), and must
# confirm it by the link sent to it before the first log-in.
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",  # the admin's log-in by user name
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "studio:home"
# A new account first sees its gallery, where what it made as a visitor now is.
ACCOUNT_SIGNUP_REDIRECT_URL = "studio:gallery"
ACCOUNT_LOGOUT_REDIRECT_URL = "studio:home"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
# Confirming the address in the browser that signed up logs in there (which moves
# the visitor's work into the account: studio/signals.py).
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_CONFIRM_EMAIL_ON_GET = False  # a link scanner opening the link confirms nothing
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_SESSION_REMEMBER = True
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Portrait Studio] "
ACCOUNT_ADAPTER = "studio.accounts.AccountAdapter"
ACCOUNT_USER_DISPLAY = "studio.accounts.user_display"
ACCOUNT_PRESERVE_USERNAME_CASING = False
# Counted in the shared cache (database or Redis), so every web process sees the same
# counts. Failed log-ins: 10 a minute from one address, 5 per account in 5 minutes;
# past that the log-in form says so (a form error, not an error page).
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
    "change_password": "5/m/user",
    "confirm_email": "1/3m/key",
    "manage_email": "10/m/user",
    "reauthenticate": "10/m/user",
}

# --- E-mail ---------------------------------------------------------------------
# Printed to the console unless a server is configured: EMAIL_URL
# (smtp://user:pass@host:port, smtp+tls://…, smtps://…) or the EMAIL_* settings.
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Portrait Studio <no-reply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 20, minimum=1)
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend"
)
_email_url = env_email_url("EMAIL_URL")
if _email_url:
    globals().update(_email_url)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on")

# --- Sessions ---------------------------------------------------------------
SESSION_COOKIE_AGE = 60 * 60 * 24 * 90
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# Sessions stay in the database, and every web process reads them through a
# cache they all share (cached_db): each job card's status poll reads the
# session, and this keeps that read off the database (tests/test_query_counts.py).
# Redis when it is configured; on SQLite, whose processes all run on one
# machine, files in the data directory; otherwise the database alone.
if REDIS_URL:
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
elif _sqlite:
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    SESSION_CACHE_ALIAS = "sessions"
    CACHES["sessions"] = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "session-cache"),
        # Past this, a third of the files go; those sessions are read from the database again.
        "OPTIONS": {"MAX_ENTRIES": 10000},
    }
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Background jobs (django-q2) -----------------------------------------
# Jobs are IO-bound (vendor calls, polling) or short local image work, so
# more workers than cores. `timeout` bounds one task run; `retry` must be
# larger, or a task still running is handed to a second worker.
STUDIO_JOB_TIMEOUT = env_int("STUDIO_JOB_TIMEOUT", 300, minimum=10)
Q_CLUSTER = {
    # The Redis broker's queue is named after the cluster: processes that
    # should share work share this name, separate sites (or test runs) on one
    # Redis do not. (Not Q_CLUSTER_NAME: django-q2 reads that one itself.)
    "name": env_str("STUDIO_QUEUE_NAME", "portraitstudio"),
    "workers": env_int("Q_WORKERS", 4, minimum=1, maximum=64),
    "recycle": 200,
    "timeout": STUDIO_JOB_TIMEOUT,
    "retry": STUDIO_JOB_TIMEOUT + 60,
    # One more delivery after a crash; our job table makes a re-run safe
    # (the job is claimed with a conditional update and resumes its stage).
    "max_attempts": 2,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 500,
    "poll": 0.2,
    "label": "Background jobs",
    "sync": env_bool("Q_SYNC", False),
}
# The ORM broker keeps delivery receipts; the Redis broker is faster but has
# none, so a task whose worker dies is gone: the job table and the recovery
# sweep bring such jobs back (see studio/jobs/recovery.py).
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
# Tasks a cluster takes from the broker ahead of its free workers (django-q2's
# default is workers²). Jobs last seconds to minutes: a message held by a busy
# cluster waits while another cluster may be idle, and is lost if that cluster
# dies (recovery then resends it), so keep about one per worker.
Q_CLUSTER["queue_limit"] = Q_CLUSTER["workers"]
# django-q2's workers run local, CPU-bound operations (retouch, segmentation, …)
# and the schedules: about one per core. Vendor jobs never take a worker: their
# steps run on the step runner's threads (studio/jobs/steps.py, below).
Q_CPU_WORKERS = env_int("Q_CPU_WORKERS", env_int("Q_WORKERS", os.cpu_count() or 1, minimum=1), minimum=1, maximum=64)
Q_CLUSTER["workers"] = Q_CLUSTER["queue_limit"] = Q_CPU_WORKERS
# A job not finished this long after it was queued is failed by the sweeper.
STUDIO_JOB_DEADLINE_SECONDS = env_int("STUDIO_JOB_DEADLINE_SECONDS", 900, minimum=30)
# Crash recovery (studio/jobs/recovery.py). A running job's worker refreshes its
# heartbeat every third of STUDIO_JOB_ORPHAN_SECONDS from a side thread, so a
# job whose heartbeat is older than that lost its worker (SIGKILL, a machine
# gone) and is queued again to resume. A queued job not picked up for
# STUDIO_JOB_REQUEUE_SECONDS whose message is not waiting in the broker (the
# Redis broker has no receipts) is enqueued again. Each worker process checks
# every STUDIO_RECOVERY_EVERY_SECONDS; one of them per interval does the work.
STUDIO_JOB_ORPHAN_SECONDS = env_int("STUDIO_JOB_ORPHAN_SECONDS", 30, minimum=2)
STUDIO_JOB_REQUEUE_SECONDS = env_int("STUDIO_JOB_REQUEUE_SECONDS", 60, minimum=2)
STUDIO_RECOVERY_EVERY_SECONDS = env_int("STUDIO_RECOVERY_EVERY_SECONDS", 15, minimum=1)
# A vendor job holds no worker (studio/jobs/steps.py): the step runner (manage.py
# runsteps) looks this often for jobs whose next step (submit, poll, download) is due,
STUDIO_STEP_TICK_MS = env_int("STUDIO_STEP_TICK_MS", 100, minimum=20, maximum=5000)
# in this many processes (preparing uploads and storing results is picture work, which
# one interpreter does one at a time: about one per core),
STUDIO_STEP_PROCESSES = env_int("STUDIO_STEP_PROCESSES", os.cpu_count() or 1, minimum=1, maximum=64)
# each running this many steps at once, one per thread (a step is mostly a wait on a socket),
STUDIO_STEPS_AT_ONCE = env_int("STUDIO_STEPS_AT_ONCE", 16, minimum=1, maximum=256)
# plus this many slow synchronous calls (the Headshot API's, up to 3 minutes each).
STUDIO_SLOW_STEPS_AT_ONCE = env_int("STUDIO_SLOW_STEPS_AT_ONCE", 8, minimum=1, maximum=256)

# --- Product --------------------------------------------------------------
STUDIO_SANDBOX = env_bool("STUDIO_SANDBOX", False)
# Where `manage.py runemulators` serves the sandbox emulators, so every web and
# worker process sees the same ones; empty: each process keeps its own.
STUDIO_SANDBOX_URL = env_url("STUDIO_SANDBOX_URL", "")
STUDIO_GALLERY_PAGE_SIZE = env_int("STUDIO_GALLERY_PAGE_SIZE", 12, minimum=1, maximum=100)

# --- Vendors ------------------------------------------------------------------
# Every base URL, path, body variant and cadence is a setting (see
# ../shared/vendor-apis.md §5): several are uncertain and may need changing
# against a live account. With STUDIO_SANDBOX=1 every vendor is served by its
# local emulator instead, and every result is labelled "sandbox".

# Perfect Corp (vendor-apis.md §1)
PERFECTCORP_BASE_URL = env_url("PERFECTCORP_BASE_URL", "https://yce-api-01.perfectcorp.com")
PERFECTCORP_CLIENT_ID = env_secret("PERFECTCORP_CLIENT_ID", "")
PERFECTCORP_CLIENT_SECRET = env_secret("PERFECTCORP_CLIENT_SECRET", "")  # base64 X.509 public key
PERFECTCORP_FILE_API = env_str("PERFECTCORP_FILE_API", "v1.0")  # or "v1.1" (sends file_size)
PERFECTCORP_RSA_PADDING = env_str("PERFECTCORP_RSA_PADDING", "pkcs1v15")  # or "oaep-sha1"
# JSON object {feature key: path segment}; overrides the built-in §1.5 table.
PERFECTCORP_FEATURE_PATHS = env_str("PERFECTCORP_FEATURE_PATHS", "")
PERFECTCORP_POLL_FLOOR_MS = env_int("PERFECTCORP_POLL_FLOOR_MS", 1000, minimum=100)
# vendor-apis.md §1.9.3 suggests 5 s between polls for safety; we allow 8.5 s
# so a typical 8-second task costs one poll, not two (bench/perfectcorp_throughput.py:
# 92% of the rate-limit bound instead of 69%). It stays safe because the shared
# budget reserves every running task's polls, a poll waits at most 1.5 s for
# it, and a task lost anyway costs no credit and is re-run once.
PERFECTCORP_POLL_CEILING_MS = env_int("PERFECTCORP_POLL_CEILING_MS", 8500, minimum=100)
PERFECTCORP_RATE_PER_TOKEN = env_int("PERFECTCORP_RATE_PER_TOKEN", 100, minimum=1)  # per 60 s
PERFECTCORP_RATE_PER_IP = env_int("PERFECTCORP_RATE_PER_IP", 100, minimum=1)  # per 300 s
PERFECTCORP_JOB_DEADLINE_S = env_int("PERFECTCORP_JOB_DEADLINE_S", 120, minimum=10)
# Lengths of the two rate-limit windows above, and of the 10-second rule (§1.9.2–1.9.3).
PERFECTCORP_RATE_WINDOW_TOKEN_S = env_int("PERFECTCORP_RATE_WINDOW_TOKEN_S", 60, minimum=1)
PERFECTCORP_RATE_WINDOW_IP_S = env_int("PERFECTCORP_RATE_WINDOW_IP_S", 300, minimum=1)
PERFECTCORP_TASK_LOST_AFTER_S = env_int("PERFECTCORP_TASK_LOST_AFTER_S", 10, minimum=1)
# Access tokens live 2 hours; refresh well before.
PERFECTCORP_TOKEN_REFRESH_S = env_int("PERFECTCORP_TOKEN_REFRESH_S", 6600, minimum=60)
# A photo uploaded for one job serves the next jobs on it for this long (a batch of styles
# uploads it once; studio/vendors/perfectcorp.py, _recent_uploads); 0 uploads it for every job.
PERFECTCORP_UPLOAD_REUSE_S = env_int("PERFECTCORP_UPLOAD_REUSE_S", 600, minimum=0)
# Which protocol family (../shared/perfectcorp-v2.md): "v1" is the original s2s
# v1.0 page (RSA id_token, CLIENT_ID/SECRET); "v2" uses PERFECTCORP_API_KEY as a
# bearer token, the v2 file API and /s2s/v2.x/task/{feature} (studio/vendors/perfectcorp_v2.py).
PERFECTCORP_API_VERSION = env_str("PERFECTCORP_API_VERSION", "v1").lower()
if PERFECTCORP_API_VERSION not in ("v1", "v2"):
    raise ImproperlyConfigured("PERFECTCORP_API_VERSION must be v1 or v2")
PERFECTCORP_API_KEY = env_secret("PERFECTCORP_API_KEY", "")
PERFECTCORP_V2_BASE_URL = env_url("PERFECTCORP_V2_BASE_URL", "https://yce-api-01.makeupar.com")
# JSON object {operation key or v2 feature: "v2.0/feature"}: v2 paths the documents leave
# unconfirmed (wig, standard object removal) or that Perfect Corp moves.
PERFECTCORP_V2_FEATURES = env_str("PERFECTCORP_V2_FEATURES", "")
# v2's one limit (§6): 250 requests per 300 s, per client IP and per API key.
PERFECTCORP_V2_RATE_LIMIT = env_int("PERFECTCORP_V2_RATE_LIMIT", 250, minimum=1)
PERFECTCORP_V2_RATE_WINDOW_S = env_int("PERFECTCORP_V2_RATE_WINDOW_S", 300, minimum=1)
# v2 only: wait for the Standard Webhooks notification (needs PERFECTCORP_WEBHOOK_SECRET
# or sandbox mode); polls then come at the webhook backstop, capped by the polling window.
PERFECTCORP_WEBHOOKS = env_bool("PERFECTCORP_WEBHOOKS", True)
# Sandbox: where the Perfect Corp emulator delivers v2 webhooks (empty: STUDIO_PUBLIC_URL/webhooks/perfectcorp/).
PERFECTCORP_SANDBOX_WEBHOOK_URL = env_url("PERFECTCORP_SANDBOX_WEBHOOK_URL", "")

# WaveSpeed (vendor-apis.md §2)
WAVESPEED_BASE_URL = env_url("WAVESPEED_BASE_URL", "https://api.wavespeed.ai")
WAVESPEED_API_KEY = env_secret("WAVESPEED_API_KEY", "")
WAVESPEED_PORTRAIT_PATH = env_str("WAVESPEED_PORTRAIT_PATH", "wavespeed-ai/portrait")
WAVESPEED_CHARACTER_PATH = env_str("WAVESPEED_CHARACTER_PATH", "wavespeed-ai/instant-character")
WAVESPEED_RESULT_PATH = env_str("WAVESPEED_RESULT_PATH", "/api/v3/predictions/{id}/result")
WAVESPEED_JOB_DEADLINE_S = env_int("WAVESPEED_JOB_DEADLINE_S", 300, minimum=10)
# The vendor SDK's upload route [PR]: how InstantCharacter gets a URL of our private photo.
WAVESPEED_UPLOAD_PATH = env_str("WAVESPEED_UPLOAD_PATH", "/api/v3/media/upload/binary")
WAVESPEED_POLL_MS = env_int("WAVESPEED_POLL_MS", 1000, minimum=100)  # doubled after the first 10 s

# Webhooks (docs/deploy.md, "Webhooks"): a vendor's callback wakes the job at
# once (studio/wakeup.py); while one is registered the job still polls, this
# seldom, so a lost webhook never leaves it stuck.
STUDIO_WEBHOOK_BACKSTOP_SECONDS = env_int("STUDIO_WEBHOOK_BACKSTOP_SECONDS", 25, minimum=1, maximum=300)
# Ask WaveSpeed to call /webhooks/wavespeed/<token>/ under STUDIO_PUBLIC_URL when a
# prediction ends (not done when that address is loopback or private outside sandbox mode).
WAVESPEED_WEBHOOKS = env_bool("WAVESPEED_WEBHOOKS", True)
# The whsec_… secret of the endpoint registered in Perfect Corp's API console
# for /webhooks/perfectcorp/ (Standard Webhooks signatures).
PERFECTCORP_WEBHOOK_SECRET = env_secret("PERFECTCORP_WEBHOOK_SECRET", "")

# Vtrix (vendor-apis.md §3)
VTRIX_BASE_URL = env_url("VTRIX_BASE_URL", "https://cloud.vtrix.ai")
VTRIX_API_KEY = env_secret("VTRIX_API_KEY", "")
VTRIX_BODY_MODE = env_str("VTRIX_BODY_MODE", "wrapped")  # or "flat"
VTRIX_TASK_PATH = env_str("VTRIX_TASK_PATH", "/model/v1/generation/task/{id}")
VTRIX_JOB_DEADLINE_S = env_int("VTRIX_JOB_DEADLINE_S", 300, minimum=10)
VTRIX_CREATE_PATH = env_str("VTRIX_CREATE_PATH", "/model/v1/generation")
VTRIX_POLL_MS = env_int("VTRIX_POLL_MS", 3000, minimum=100)
# How long the signed URL of an image sent to Vtrix stays valid.
STUDIO_SIGNED_URL_SECONDS = env_int("STUDIO_SIGNED_URL_SECONDS", 600, minimum=30)

# Headshot API (vendor-apis.md §4)
HEADSHOT_API_BASE_URL = env_url("HEADSHOT_API_BASE_URL", "https://api-us.idphotoapp.com")
HEADSHOT_API_KEY = env_secret("HEADSHOT_API_KEY", "")
HEADSHOT_API_PATH = env_str("HEADSHOT_API_PATH", "/api/generate-portrait")
HEADSHOT_API_JOB_DEADLINE_S = env_int("HEADSHOT_API_JOB_DEADLINE_S", 180, minimum=10)

# --- Security ---------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("STUDIO_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Load balancers probe the health check over plain HTTP, behind the proxy.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
# Our own small middleware (studio/security.py) sends the Content-Security-
# Policy: the policy is one fixed string (no inline code anywhere, so no
# nonces), which does not justify a dependency. Extra sources, space-separated,
# can be allowed for images (e.g. an S3 bucket) without a code change.
STUDIO_CSP_EXTRA_IMG_SRC = env_str("STUDIO_CSP_EXTRA_IMG_SRC", "")
# A request body larger than this is refused before it is read (413); the
# photo limit itself is checked later with its own message.
STUDIO_MAX_REQUEST_MB = env_int("STUDIO_MAX_REQUEST_MB", STUDIO_MAX_UPLOAD_MB + 5, minimum=1, maximum=500)

# --- Privacy: retention ---------------------------------------------------------
# Uploaded photos (and every copy made to send to a vendor) are deleted this
# many hours after their last job; results stay until their owner deletes them.
STUDIO_RETENTION_HOURS = env_int("STUDIO_RETENTION_HOURS", 24, minimum=1, maximum=24 * 365)
STUDIO_PURGE_EVERY_MINUTES = env_int("STUDIO_PURGE_EVERY_MINUTES", 15, minimum=1, maximum=24 * 60)

# --- Abuse limits (counted in the shared cache, per hour) -----------------------
# Per visitor (or account) and, more generously, per client IP (several people
# can share one address). Concurrent jobs are counted from the job table.
STUDIO_UPLOADS_PER_HOUR = env_int("STUDIO_UPLOADS_PER_HOUR", 60, minimum=1)
STUDIO_UPLOADS_PER_HOUR_PER_IP = env_int("STUDIO_UPLOADS_PER_HOUR_PER_IP", 240, minimum=1)
STUDIO_JOBS_PER_HOUR = env_int("STUDIO_JOBS_PER_HOUR", 120, minimum=1)
STUDIO_JOBS_PER_HOUR_PER_IP = env_int("STUDIO_JOBS_PER_HOUR_PER_IP", 480, minimum=1)
STUDIO_MAX_CONCURRENT_JOBS = env_int("STUDIO_MAX_CONCURRENT_JOBS", 4, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # httpx logs every URL at INFO; signed URLs carry credentials in their query.
    "loggers": {
        "django.request": {"level": "ERROR"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
