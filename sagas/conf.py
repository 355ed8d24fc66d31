"""The SAGAS setting, read when asked for, never at import time."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # How long a worker holds a saga before recovery may take it over; renewed on each write.
    "LEASE_SECONDS": 120.0,
    # Extra seconds a lease lasts beyond the longest step timeout of the saga.
    "LEASE_MARGIN_SECONDS": 30.0,
    # Use a Redis lock in front of the database lease when Redis is configured.
    "REDIS_LOCKS": True,
    # Run the timer that hands delayed retries to workers inside each qcluster process.
    "TIMER": True,
    "TIMER_POLL_SECONDS": 0.25,
    # A saga with no lease, no pending wake-up and no progress for this long lost its task.
    "STALE_AFTER_SECONDS": 60.0,
    # Priority name (LOW, NORMAL, HIGH, CRITICAL) -> django-q2 cluster name; absent = default.
    "PRIORITY_QUEUES": {},
    "RECOVERY_BATCH": 200,
    # Monitoring thresholds [seed 000]: no progress for 10 min is stuck, over 5 min is long.
    "STUCK_AFTER_SECONDS": 600,
    "LONG_RUNNING_SECONDS": 300,
    # How often the timer thread runs recovery, the deadline check and the outbox relay.
    "RECOVERY_INTERVAL_SECONDS": 30.0,
    "TIMEOUT_CHECK_INTERVAL_SECONDS": 60.0,
    "OUTBOX_RELAY_INTERVAL_SECONDS": 5.0,
    # A saga still failing after this long goes to the dead-letter queue [seed 001: 3 days].
    "DEAD_LETTER_AFTER_SECONDS": 3 * 24 * 3600.0,
    "MAX_RECOVERY_ATTEMPTS": 10,
    # Dotted path of fn(*, user, saga) -> bool: which sagas a non-staff API user may read.
    "API_VISIBILITY": None,
}


def saga_setting(name: str) -> Any:
    return getattr(settings, "SAGAS", {}).get(name, DEFAULTS[name])
