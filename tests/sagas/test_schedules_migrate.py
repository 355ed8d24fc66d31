"""The engine's schedules after ``migrate``, also when one app is migrated on its own first."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _manage(var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "L2C_TESTING")
    }
    env.update(L2C_VAR_DIR=str(var_dir), DJANGO_DEBUG="true")
    return subprocess.run(
        [sys.executable, "manage.py", *args, "-v0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_migrating_the_engine_alone_first_then_everything_ends_with_its_schedules(tmp_path):
    alone = _manage(tmp_path, "migrate", "sagas")
    assert alone.returncode == 0, alone.stderr

    everything = _manage(tmp_path, "migrate")
    assert everything.returncode == 0, everything.stderr

    with sqlite3.connect(tmp_path / "l2c.sqlite3") as db:
        names = {name for (name,) in db.execute("SELECT name FROM django_q_schedule")}
    assert {"sagas: recover lost sagas", "sagas: outbox relay"} <= names
