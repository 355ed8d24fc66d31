"""Named fault points for crash and failure tests; no-ops unless settings.TESTING is on.

Shared by the engine and the domains (a crash between a remote call and its record).

Faults come from the SAGA_FAULTS environment variable (so a worker subprocess can be told to
crash) or from ``set_faults`` in the test's own process: ``name=action`` pairs separated by
commas. Actions: ``kill`` (SIGKILL this process), ``raise``, ``sleep:N``, ``fail:N`` (raise
on the first N passes).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from django.conf import settings


class FaultInjected(Exception):
    """A transient failure raised on purpose by a fault point."""


_lock = threading.Lock()
_faults: dict[str, str] | None = None
_passes: dict[str, int] = {}


def _parse(spec: str) -> dict[str, str]:
    faults = {}
    for part in spec.split(","):
        if "=" in part:
            name, action = part.split("=", 1)
            faults[name.strip()] = action.strip()
    return faults


def set_faults(spec: dict[str, str] | None) -> None:
    global _faults
    with _lock:
        _faults = dict(spec or {})
        _passes.clear()


def _active() -> dict[str, str]:
    global _faults
    if _faults is None:
        _faults = _parse(os.environ.get("SAGA_FAULTS", ""))
    return _faults


def fault_point(name: str) -> None:
    if not getattr(settings, "TESTING", False):
        return
    action = _active().get(name)
    if not action:
        return
    with _lock:
        _passes[name] = _passes.get(name, 0) + 1
        passes = _passes[name]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FaultInjected(name)
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    elif action.startswith("fail:") and passes <= int(action.split(":", 1)[1]):
        raise FaultInjected(f"{name} (pass {passes})")
