"""A real django-q2 cluster in a subprocess, pointed at the test database, for crash tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 60.0,
    what: str | Callable[[], str] = "",
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``.
    ``what`` may be a callable, so a failure message can show logs read at that moment."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            description = what() if callable(what) else what
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {description or predicate}"
            )
        time.sleep(0.05)


def test_database_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgresql://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class QCluster:
    """``manage.py qcluster`` as its own process group, so kill -9 takes all its processes."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.log_dir = log_dir
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, **extra_env: str) -> QCluster:
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "l2c.settings.test",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "L2C_TESTING": "true",
            "LOG_LEVEL": "INFO",
            **self.env,
            **extra_env,
        }
        if not settings.REDIS_URL:
            environment.pop("REDIS_URL")
        self.starts += 1
        log = open(self.log_dir / f"qcluster-{self.starts}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        """SIGKILL the whole cluster: sentinel, workers, monitor, pusher."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted(self.log_dir.glob("qcluster-*.log"))
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in logs
        )
