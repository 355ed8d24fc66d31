"""The timer inside each ``qcluster`` process: sub-minute housekeeping.

django-q2's scheduler looks at its schedules about every 30 s with a one-minute resolution,
which is too coarse for a retry due in 2 s. This thread hands due sagas to workers every
``TIMER_POLL_SECONDS`` and runs recovery, the deadline check and the outbox relay on their
own intervals; the django-q2 schedules (``sagas.schedules``) are the backstop that works even
where no timer runs. Several timers (several nodes) are safe: every pass claims its sagas or
messages by compare-and-set. On start it runs recovery at once, so a restarted worker picks
up what a crash left.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.db import close_old_connections, connections

from sagas.conf import saga_setting

logger = logging.getLogger("sagas.timer")

_started = threading.Event()
_stop = threading.Event()


def _jobs() -> list[tuple[str, float, Callable[[], object]]]:
    from sagas import engine

    jobs: list[tuple[str, float, Callable[[], object]]] = [
        ("wake", saga_setting("TIMER_POLL_SECONDS"), engine.sagas_wake_due),
        ("recover", saga_setting("RECOVERY_INTERVAL_SECONDS"), engine.sagas_recover),
        ("expire", saga_setting("TIMEOUT_CHECK_INTERVAL_SECONDS"), engine.sagas_expire),
    ]
    try:
        from sagas.outbox import outbox_relay
    except ImportError:  # pragma: no cover - the outbox module ships with the engine
        return jobs
    jobs.append(("outbox", saga_setting("OUTBOX_RELAY_INTERVAL_SECONDS"), outbox_relay))
    return jobs


def _loop() -> None:
    jobs = _jobs()
    # Recovery first: what a crash left behind is picked up as soon as a worker starts.
    next_run = {name: 0.0 if name == "recover" else time.monotonic() for name, _, _ in jobs}
    poll = saga_setting("TIMER_POLL_SECONDS")
    while not _stop.is_set():
        close_old_connections()
        for name, interval, job in jobs:
            if time.monotonic() < next_run[name]:
                continue
            next_run[name] = time.monotonic() + interval
            try:
                job()
            except Exception:
                logger.exception("timer job %s failed; it runs again next interval", name)
                connections.close_all()
        _stop.wait(poll)


def _import_everything_the_timer_touches() -> None:
    """Import, in the starting thread, every module the timer's jobs will use.

    The thread starts while the main thread is still booting the command (system checks
    import the cache backend, redis, the broker). Two threads importing the same circular
    modules at once can see one of them half-initialised ("cannot import name ... from
    partially initialized module"): a worker that never starts. Importing first avoids it.
    """
    from django.conf import settings
    from django.core.cache import caches
    from django_q.brokers import get_broker  # noqa: F401
    from django_q.tasks import async_task  # noqa: F401

    from sagas import deadletters, engine, outbox  # noqa: F401

    caches["default"]
    if settings.REDIS_URL:
        import redis  # noqa: F401
        from django_redis import get_redis_connection

        get_redis_connection("default")
    engine._broker(None)


def timer_start() -> None:
    """Start the timer thread once per process."""
    if _started.is_set():
        return
    _started.set()
    _import_everything_the_timer_touches()
    thread = threading.Thread(target=_loop, name="saga-timer", daemon=True)
    thread.start()


def timer_stop() -> None:
    _stop.set()
