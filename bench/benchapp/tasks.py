"""A task that does nothing but count itself: the broker's own floor under the same clusters."""

from __future__ import annotations

NOOP_COUNTER = "bench:noop"


def noop() -> None:
    from django_redis import get_redis_connection

    get_redis_connection("default").incr(NOOP_COUNTER)
