"""Stop and start the suite's own PostgreSQL and Redis, for outage tests.

The test command (scripts/test.sh) exports where its throwaway servers live; a test that
needs to restart one is skipped when run against servers it does not own.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from urllib.parse import urlsplit

import pytest
from django.conf import settings


def pg_restart_fast() -> None:
    """``pg_ctl restart -m fast``: every connection is cut, the server is back in a second."""
    bin_dir = os.environ.get("L2C_PG_BIN")
    data = os.environ.get("L2C_PG_DATA")
    if not (bin_dir and data):
        pytest.skip("the suite does not own this PostgreSQL (run it through scripts/test.sh)")
    run_as = os.environ.get("L2C_PG_RUN_AS", "").split()
    subprocess.run(
        [
            *run_as,
            f"{bin_dir}/pg_ctl",
            "-D",
            data,
            "-l",
            os.path.join(os.path.dirname(data), "server.log"),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "restart",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _redis_port() -> int:
    if not settings.REDIS_URL:
        pytest.skip("no Redis configured")
    return urlsplit(settings.REDIS_URL).port or 6379


def redis_stop() -> None:
    subprocess.run(
        ["redis-cli", "-p", str(_redis_port()), "shutdown", "nosave"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def redis_start() -> None:
    """Start an empty Redis on the same port; the test command stops it at exit."""
    directory = tempfile.mkdtemp(prefix="l2c-redis-restart.")
    subprocess.run(
        [
            "redis-server",
            "--port",
            str(_redis_port()),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            directory,
            "--logfile",
            os.path.join(directory, "redis.log"),
        ],
        check=True,
    )


def redis_is_up() -> bool:
    result = subprocess.run(
        ["redis-cli", "-p", str(_redis_port()), "ping"], capture_output=True, text=True
    )
    return result.stdout.strip() == "PONG"


def redis_flushall() -> None:
    subprocess.run(
        ["redis-cli", "-p", str(_redis_port()), "flushall"], check=True, capture_output=True
    )
