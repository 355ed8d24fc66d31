"""Settings for the test suite: the base settings with fast hashing and captured e-mail."""

from __future__ import annotations

import os

os.environ.setdefault("L2C_TESTING", "true")

from l2c.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {  # noqa: F405
    "user": "100000/min",
    "anon": "100000/min",
    "orders": "100000/min",
}

# The test sagas and the rows they write; autodiscovery registers tests/sagatest/sagas.py.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.sagatest"]  # noqa: F405
