"""Reads of sagas for the console, the API and the invariant checks."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from sagas.models import OutboxMessage, SagaInstance


def saga_invariant_violations(*, grace_seconds: float = 60.0) -> list[str]:
    """Sagas that should have ended by now, and dead letters without a reason."""
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    problems = [
        f"saga {saga_id} ({definition}) still {status} after {grace_seconds:g} s"
        for saga_id, definition, status in SagaInstance.objects.filter(
            status__in=SagaInstance.ACTIVE, updated_at__lt=cutoff
        ).values_list("pk", "definition", "status")
    ]
    problems += [
        f"saga {saga_id} is dead-lettered without a reason"
        for saga_id in SagaInstance.objects.filter(dead_lettered_at__isnull=False)
        .filter(Q(dead_letter_reason="") | Q(dead_letter_reason__isnull=True))
        .values_list("pk", flat=True)
    ]
    return problems


def outbox_invariant_violations(*, grace_seconds: float = 60.0) -> list[str]:
    """Messages not delivered within the grace period, and messages given up on."""
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    problems = [
        f"outbox {message_id} ({topic}) still pending after {grace_seconds:g} s"
        for message_id, topic in OutboxMessage.objects.filter(
            status=OutboxMessage.Status.PENDING, created_at__lt=cutoff
        ).values_list("pk", "topic")
    ]
    problems += [
        f"outbox {message_id} ({topic}) FAILED: {error[:200]}"
        for message_id, topic, error in OutboxMessage.objects.filter(
            status=OutboxMessage.Status.FAILED
        ).values_list("pk", "topic", "last_error")
    ]
    return problems
