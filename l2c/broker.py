"""django-q2's Redis broker, taking up to a batch of tasks per round trip when they wait.

django-q2's pusher pops one task per ``BLPOP``: with a backlog (a burst of orders), each task
costs the pusher and Redis a round trip of its own. ``BLMPOP`` (Redis 7) blocks the same way
on an empty queue and, when tasks wait, returns up to ``Q_CLUSTER["bulk"]`` of them at once.
The pusher hands them to the workers in order, through its task queue, as before: tasks a
killed pusher held are lost in the same way as those it had already queued, and the engine's
recovery finds their sagas. On an older Redis the broker falls back to ``BLPOP``.
"""

from __future__ import annotations

import logging
from typing import Any

from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)


class RedisBroker(Redis):
    _batch_pop = True

    def dequeue(self) -> list[tuple[None, Any]] | None:
        count = max(int(Conf.BULK), 1)
        if count > 1 and self._batch_pop:
            try:
                popped = self.connection.blmpop(1, 1, self.list_key, direction="LEFT", count=count)
            except ResponseError as error:  # a Redis before 7.0 does not know BLMPOP
                logger.warning("Redis has no BLMPOP (%s): popping one task at a time", error)
                self._batch_pop = False
            else:
                return [(None, task) for task in popped[1]] if popped else None
        return super().dequeue()
