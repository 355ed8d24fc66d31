"""Settings come from environment variables; no variables means the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from l2c.env import ImproperlyConfiguredEnv, env_bool, parse_database_url

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import django; django.setup(); from django.conf import settings as s;"
    "print(s.DATABASES['default']['ENGINE'], s.CACHES['default']['BACKEND'],"
    " 'redis' if 'django_redis' in s.Q_CLUSTER else 'orm', s.DEBUG)"
)


def run_settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "L2C", "DATA"))}
    clean.pop("REDIS_URL", None)
    clean.update(DJANGO_SETTINGS_MODULE="l2c.settings.base", **env)
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True
    )


def test_no_variables_give_sqlite_locmem_and_the_orm_broker(tmp_path):
    result = run_settings(DJANGO_DEBUG="true", L2C_VAR_DIR=str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django_prometheus.db.backends.sqlite3",
        "django.core.cache.backends.locmem.LocMemCache",
        "orm",
        "True",
    ]


def test_urls_switch_to_postgresql_and_redis():
    result = run_settings(
        DJANGO_SECRET_KEY="x" * 50,
        DATABASE_URL="postgresql://u:p@db.internal:5433/shop",
        REDIS_URL="redis://cache.internal:6379/0",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "l2c.db_backends.postgresql",
        "django_redis.cache.RedisCache",
        "redis",
        "False",
    ]


def test_secret_key_is_required_when_debug_is_off():
    result = run_settings()

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_parse_database_url_reads_every_part():
    parsed = parse_database_url("postgresql://us%40er:p%3Ass@h:5433/db?sslmode=require")

    assert parsed == {
        "NAME": "db",
        "USER": "us@er",
        "PASSWORD": "p:ss",
        "HOST": "h",
        "PORT": "5433",
        "OPTIONS": {"sslmode": "require"},
    }


@pytest.mark.parametrize("url", ["mysql://h/db", "postgresql://h/"])
def test_parse_database_url_refuses_what_it_cannot_use(url):
    with pytest.raises(ImproperlyConfiguredEnv):
        parse_database_url(url)


def test_env_bool_refuses_nonsense(monkeypatch):
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ImproperlyConfiguredEnv):
        env_bool("FLAG")
