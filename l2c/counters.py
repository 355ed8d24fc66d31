"""Counters in the configured cache, shared by every process (Redis in production)."""

from __future__ import annotations

from typing import Any


def counter_incr(cache: Any, key: str, timeout: int) -> int:
    """Add one to the counter ``key`` and return its value; a new counter lives ``timeout``
    seconds from its first increment.

    Atomic where the cache's increment is (``INCR`` in Redis). One round trip, except for a
    counter's first increment, which creates it; two processes creating it at once both count.
    """
    try:
        return cache.incr(key)
    except ValueError:  # not there yet (or just expired)
        if cache.add(key, 1, timeout):
            return 1
        return cache.incr(key)  # another process created it first
