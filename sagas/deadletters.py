"""The dead-letter queue: sagas that need an operator.

A saga enters it when its compensation is exhausted, when a step after the pivot gives up,
when recovery keeps failing on it, or when it has been failing for longer than
``DEAD_LETTER_AFTER_SECONDS`` (3 days). The database is the source of truth
(``dead_lettered_at`` set, ``resolved_at`` empty); a Redis index (a hash of summaries and a
sorted set by time) serves the console fast and is rebuilt from the database whenever Redis
lost it (restart, FLUSHALL) or disagrees with it.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from sagas.conf import saga_setting
from sagas.models import Intervention, SagaEvent, SagaInstance

logger = logging.getLogger("sagas.deadletters")

INDEX_HASH = "l2c:dlq:sagas"
INDEX_ZSET = "l2c:dlq:by-time"
INDEX_MARKER = "l2c:dlq:built"

Status = SagaInstance.Status


def dead_letters() -> QuerySet[SagaInstance]:
    """The open dead letters, newest first: the database's answer."""
    return SagaInstance.objects.filter(
        dead_lettered_at__isnull=False, resolved_at__isnull=True
    ).order_by("-dead_lettered_at")


def _redis() -> Any:
    if not settings.REDIS_URL:
        return None
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def _summary(saga: SagaInstance) -> str:
    return json.dumps(
        {
            "id": str(saga.pk),
            "definition": saga.definition,
            "version": saga.version,
            "business_key": saga.business_key,
            "status": saga.status,
            "reason": saga.dead_letter_reason,
            "error_code": saga.error_code,
            "dead_lettered_at": saga.dead_lettered_at.isoformat() if saga.dead_lettered_at else "",
        }
    )


def dead_letter_index_add(saga_id: object) -> None:
    client = _redis()
    if client is None:
        return
    saga = SagaInstance.objects.filter(pk=saga_id).first()
    if saga is None or saga.dead_lettered_at is None or saga.resolved_at is not None:
        return
    try:
        pipe = client.pipeline()
        pipe.hset(INDEX_HASH, str(saga.pk), _summary(saga))
        pipe.zadd(INDEX_ZSET, {str(saga.pk): saga.dead_lettered_at.timestamp()})
        pipe.execute()
    except Exception as exc:  # the index is a cache of the database: rebuilt later
        logger.warning("dead-letter index not updated for %s: %s", saga_id, exc)


def dead_letter_index_remove(saga_id: object) -> None:
    client = _redis()
    if client is None:
        return
    try:
        pipe = client.pipeline()
        pipe.hdel(INDEX_HASH, str(saga_id))
        pipe.zrem(INDEX_ZSET, str(saga_id))
        pipe.execute()
    except Exception as exc:
        logger.warning("dead-letter index not updated for %s: %s", saga_id, exc)


def dead_letter_index_rebuild() -> int:
    """Replace the Redis index with what the database says; returns the entry count."""
    client = _redis()
    if client is None:
        return 0
    sagas = list(dead_letters())
    pipe = client.pipeline(transaction=True)
    pipe.delete(INDEX_HASH, INDEX_ZSET)
    for saga in sagas:
        pipe.hset(INDEX_HASH, str(saga.pk), _summary(saga))
        pipe.zadd(INDEX_ZSET, {str(saga.pk): saga.dead_lettered_at.timestamp()})
    pipe.set(INDEX_MARKER, timezone.now().isoformat())
    pipe.execute()
    return len(sagas)


def dead_letter_index_check() -> bool:
    """Rebuild the index when Redis lost it or its size disagrees with the database.
    True when it was rebuilt."""
    client = _redis()
    if client is None:
        return False
    try:
        built = client.exists(INDEX_MARKER)
        size = client.zcard(INDEX_ZSET)
    except Exception as exc:
        logger.warning("dead-letter index unreachable: %s", exc)
        return False
    if built and size == dead_letters().count():
        return False
    dead_letter_index_rebuild()
    return True


def dead_letter_list(*, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Open dead letters, newest first: from the Redis index when it is there and whole,
    otherwise from the database (and the index is rebuilt for next time)."""
    client = _redis()
    if client is not None:
        try:
            if client.exists(INDEX_MARKER):
                ids = client.zrevrange(INDEX_ZSET, offset, offset + limit - 1)
                if not ids:
                    return []
                rows = client.hmget(INDEX_HASH, ids)
                if all(rows):
                    return [json.loads(row) for row in rows]
            dead_letter_index_rebuild()
        except Exception as exc:
            logger.warning("dead-letter index unreachable, reading the database: %s", exc)
    return [json.loads(_summary(saga)) for saga in dead_letters()[offset : offset + limit]]


def dead_letter_size() -> int:
    return dead_letters().count()


def saga_dead_letter(*, saga_id: object, reason: str, code: str) -> bool:
    """Park an unfinished saga that nobody runs in the dead-letter queue (status FAILED).
    A compare-and-set on its status and lease: a saga a worker holds is left alone."""
    now = timezone.now()
    with transaction.atomic():
        moved = (
            SagaInstance.objects.filter(pk=saga_id, status__in=SagaInstance.ACTIVE)
            .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
            .update(
                status=Status.FAILED,
                error_code=code[:100],
                error_message=reason,
                dead_lettered_at=now,
                dead_letter_reason=reason,
                completed_at=now,
                wake_at=None,
                lease_owner="",
                lease_expires_at=None,
                updated_at=now,
            )
        )
        if moved:
            SagaEvent.objects.bulk_create(
                [
                    SagaEvent(
                        saga_id=saga_id,
                        kind=SagaEvent.Kind.FAILED,
                        status=Status.FAILED,
                        reason=reason,
                        created_at=now,
                    ),
                    SagaEvent(
                        saga_id=saga_id,
                        kind=SagaEvent.Kind.DEAD_LETTERED,
                        reason=reason,
                        created_at=now,
                    ),
                ]
            )
            transaction.on_commit(lambda: dead_letter_index_add(saga_id))
    return bool(moved)


def dead_letter_sweep() -> int:
    """Dead-letter sagas failing for longer than the limit, and heal the Redis index.
    Returns how many sagas entered the queue."""
    limit = timedelta(seconds=saga_setting("DEAD_LETTER_AFTER_SECONDS"))
    cutoff = timezone.now() - limit
    entered = 0
    stale = SagaInstance.objects.filter(
        status__in=SagaInstance.ACTIVE, created_at__lt=cutoff
    ).values_list("pk", "error_message")
    for saga_id, error in stale.iterator():
        days = limit.total_seconds() / 86400
        reason = f"failing for more than {days:g} days; last error: {error or 'none recorded'}"
        entered += saga_dead_letter(saga_id=saga_id, reason=reason, code="failing_too_long")
    dead_letter_index_check()
    return entered


@transaction.atomic
def dead_letter_resolve(*, saga_id: object, actor: Any, reason: str) -> Intervention:
    """Close a dead letter without retrying it (handled outside the system), with a reason.
    Two operators at once: one closes it, the other's attempt is audited as not effective."""
    from sagas.services import _actor_name, _audit

    saga = SagaInstance.objects.get(pk=saga_id)
    now = timezone.now()
    name = _actor_name(actor) or "system"
    effective = bool(
        SagaInstance.objects.filter(
            pk=saga_id, dead_lettered_at__isnull=False, resolved_at__isnull=True
        ).update(resolved_at=now, resolved_by=name, resolution=reason.strip(), updated_at=now)
    )
    intervention = _audit(
        saga=saga,
        actor=actor,
        action="resolve_dead_letter",
        reason=reason,
        before=saga.status,
        after=saga.status,
        effective=effective,
    )
    if effective:
        transaction.on_commit(lambda: dead_letter_index_remove(saga_id))
    return intervention


def dead_letter_retry(*, saga_id: object, actor: Any, reason: str) -> Intervention:
    """Take a saga out of the queue and let it carry on (see ``saga_resume``)."""
    from sagas.services import saga_resume

    return saga_resume(saga_id=saga_id, actor=actor, reason=reason)
