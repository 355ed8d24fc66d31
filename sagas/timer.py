"""The timer that gives sagas back to workers when their delayed retry is due.

It runs as a thread in each ``qcluster`` process, so a retry waits without holding a worker
asleep. Several timers (several nodes) are safe: each due saga is claimed by compare-and-set.
On start it also runs recovery once, so a restarted worker picks up what a crash left.
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections, connections

from sagas.conf import saga_setting

logger = logging.getLogger("sagas.timer")

_started = threading.Event()
_stop = threading.Event()


def _loop() -> None:
    from sagas.engine import sagas_recover, sagas_wake_due

    poll = saga_setting("TIMER_POLL_SECONDS")
    try:
        sagas_recover()
    except Exception:
        logger.exception("recovery at start-up failed; the scheduled scan will retry")
    while not _stop.wait(poll):
        try:
            close_old_connections()
            sagas_wake_due()
        except Exception:
            logger.exception("timer pass failed")
            connections.close_all()


def timer_start() -> None:
    """Start the timer thread once per process."""
    if _started.is_set():
        return
    _started.set()
    thread = threading.Thread(target=_loop, name="saga-timer", daemon=True)
    thread.start()


def timer_stop() -> None:
    _stop.set()
