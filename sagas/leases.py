"""Who runs a saga now. The database row is the truth; Redis, where configured, is a fast gate.

The lease is a compare-and-set on the saga row (owner + expiry): it is free, expired, or ours.
Every write the engine makes while running repeats ``lease_owner = me`` in its WHERE clause, so
a runner whose lease was taken over fails its next write and rolls back (a fencing token).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta

from django.conf import settings
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from sagas.conf import saga_setting
from sagas.models import SagaInstance

logger = logging.getLogger(__name__)

_RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_HOST = f"{socket.gethostname()}:{os.getpid()}"


def new_owner(prefix: str = "") -> str:
    """A unique owner id per run: two runs in one process must not share a lease."""
    return f"{prefix}{_HOST}:{uuid.uuid4().hex[:12]}"


def _redis():
    if not (settings.REDIS_URL and saga_setting("REDIS_LOCKS")):
        return None
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def _lock_key(saga_id: object) -> str:
    return f"l2c:saga-lease:{saga_id}"


def _redis_gate(saga_id: object, owner: str, seconds: float) -> bool:
    """False only when Redis says another owner holds the saga; Redis trouble lets the
    database decide alone."""
    client = _redis()
    if client is None:
        return True
    try:
        return bool(client.set(_lock_key(saga_id), owner, nx=True, px=int(seconds * 1000)))
    except Exception as exc:  # Redis down or flushed: the row lease still protects the saga
        logger.warning("saga lock in Redis unavailable, using the row lease: %s", exc)
        return True


def _redis_release(saga_id: object, owner: str) -> None:
    client = _redis()
    if client is None:
        return
    try:
        client.eval(_RELEASE_SCRIPT, 1, _lock_key(saga_id), owner)
    except Exception as exc:
        logger.warning("could not release the Redis lock of saga %s: %s", saga_id, exc)


def lease_acquire(saga_id: object, owner: str, seconds: float) -> bool:
    """Take the saga for ``seconds`` if it is unfinished and nobody else holds it."""
    if not _redis_gate(saga_id, owner, seconds):
        return False
    now = timezone.now()
    taken = (
        SagaInstance.objects.filter(pk=saga_id, status__in=SagaInstance.ACTIVE)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=seconds),
            runs=F("runs") + 1,
            updated_at=now,
            # Taking a new saga is also its move to EXECUTING: one statement instead of two.
            status=Case(
                When(
                    status=SagaInstance.Status.STARTED, then=Value(SagaInstance.Status.EXECUTING)
                ),
                default=F("status"),
            ),
        )
    )
    if not taken:
        _redis_release(saga_id, owner)
    return bool(taken)


def lease_gate(saga_id: object, owner: str, seconds: float) -> bool:
    """Only the Redis gate (True where there is none): for a runner that takes the row lease
    with its first write instead of before it."""
    return _redis_gate(saga_id, owner, seconds)


def lease_take(
    saga_id: object, owner: str, seconds: float, *, gate: bool = True
) -> SagaInstance | None:
    """Take the lease like ``lease_acquire`` and return the saga as it is now (read under
    the lease), or None. On PostgreSQL both are one statement. ``gate=False``: the caller
    already holds the Redis gate."""
    from sagas import fastpath

    if not fastpath.enabled():
        if not lease_acquire(saga_id, owner, seconds):
            return None
        return SagaInstance.objects.get(pk=saga_id)
    if gate and not _redis_gate(saga_id, owner, seconds):
        return None
    now = timezone.now()
    instance = fastpath.lease_take(
        saga_id=saga_id, owner=owner, expires_at=now + timedelta(seconds=seconds), now=now
    )
    if instance is None:
        _redis_release(saga_id, owner)
    return instance


def lease_release(saga_id: object, owner: str) -> None:
    SagaInstance.objects.filter(pk=saga_id, lease_owner=owner).update(
        lease_owner="", lease_expires_at=None
    )
    _redis_release(saga_id, owner)


def lease_forget(saga_id: object, owner: str) -> None:
    """Drop only the Redis gate, when the row lease was already cleared by a final write."""
    _redis_release(saga_id, owner)
