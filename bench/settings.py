"""Settings of the saga benchmark: the project's own settings plus the bench app.

Everything still comes from the environment (DATABASE_URL, REDIS_URL, DJANGO_SECRET_KEY,
Q_WORKERS, Q_CLUSTER_NAME, ...), exactly as for a deployment; ``bench/saga_bench.py`` sets them.
Two bench-only knobs:

- ``BENCH_LOG_LEVEL`` (default WARNING): the django-q2 and root log level; the peers' django-q2
  project logs at WARNING too, so both pay the same for logging.
- ``BENCH_DB_ENGINE``: replace the database backend, e.g. ``django.db.backends.postgresql`` to
  measure what the django-prometheus cursor wrapper costs.
- ``BENCH_SAGAS_REDIS_LOCKS=false``: run the engine without the Redis gate in front of the
  row lease, to measure what those two Redis round trips per saga cost.
- ``BENCH_CONN_HEALTH_CHECKS=false``: no ``SELECT 1`` before the first query of each task.
"""

from __future__ import annotations

import os

from l2c.settings.base import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]  # noqa: F405

_level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
Q_CLUSTER = {**Q_CLUSTER, "log_level": _level}  # noqa: F405
LOGGING["root"]["level"] = _level  # noqa: F405

if os.environ.get("BENCH_DB_ENGINE") and DATABASES["default"]["ENGINE"].endswith("postgresql"):  # noqa: F405
    DATABASES["default"]["ENGINE"] = os.environ["BENCH_DB_ENGINE"]  # noqa: F405

if os.environ.get("BENCH_SAGAS_REDIS_LOCKS", "").lower() in {"0", "false", "no", "off"}:
    SAGAS = {**SAGAS, "REDIS_LOCKS": False}  # noqa: F405

if os.environ.get("BENCH_CONN_HEALTH_CHECKS", "").lower() in {"0", "false", "no", "off"}:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False  # noqa: F405
