from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings


def pytest_report_header(config: pytest.Config) -> list[str]:
    database = settings.DATABASES["default"]
    cache = settings.CACHES["default"]["BACKEND"]
    return [
        f"l2c database: {settings.DATABASE_VENDOR} ({database['ENGINE']} "
        f"{database.get('HOST') or ''}:{database.get('PORT') or ''})",
        f"l2c cache: {cache}",
    ]


def pytest_sessionstart(session: pytest.Session) -> None:
    # The test command promises PostgreSQL and Redis; refuse to pass quietly on SQLite.
    required = os.environ.get("L2C_REQUIRE_SERVICES", "").lower() == "true"
    on_services = settings.DATABASE_VENDOR == "postgresql" and "redis" in str(settings.CACHES)
    if required and not on_services:
        pytest.exit("the suite must run on PostgreSQL and Redis", returncode=3)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    terminalreporter.write_line(
        f"suite ran on database={settings.DATABASE_VENDOR} "
        f"cache={settings.CACHES['default']['BACKEND']}"
    )


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def folded_commits(monkeypatch) -> list[bool]:
    """Whether each saga step's bookkeeping statement went out with its COMMIT, in order."""
    from l2c import db
    from sagas import fastpath

    folded: list[bool] = []

    def counted(sql, params):
        cursor = db.execute_and_commit(sql, params)
        folded.append(cursor is not None)
        return cursor

    monkeypatch.setattr(fastpath, "execute_and_commit", counted)
    return folded


@pytest.fixture
def own_connection() -> Iterator[Any]:
    """A database connection of its own: closing or ending it leaves the test's alone."""
    from django.db import connections

    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()
