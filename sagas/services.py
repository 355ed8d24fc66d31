"""Operator verbs: retry now, resume, force compensation, skip a step, cancel.

Each verb is one compare-and-set on the saga row (so two operators acting at once produce one
effect), writes an Intervention audit row and an ``operator_action`` event in the same
transaction (the losing operator's attempt is audited too, marked not effective), and hands
the saga to a worker after commit. A saga a worker is running right now is refused with
``SagaBusy``: the operator tries again when the worker lets go.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sagas.engine import enqueue_run
from sagas.exceptions import InvalidIntervention, SagaBusy
from sagas.models import Intervention, SagaEvent, SagaInstance, SagaStep
from sagas.registry import registry

Status = SagaInstance.Status
Comp = SagaStep.Compensation


def _free_lease(now: Any) -> Q:
    return Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)


def _actor_name(actor: Any) -> str:
    return getattr(actor, "get_username", lambda: str(actor))() if actor is not None else ""


def _audit(
    *,
    saga: SagaInstance,
    actor: Any,
    action: str,
    reason: str,
    before: str,
    after: str,
    effective: bool,
    step: str = "",
) -> Intervention:
    if not reason or not reason.strip():
        raise InvalidIntervention("a reason is required")
    name = _actor_name(actor)
    intervention = Intervention.objects.create(
        saga=saga,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_name=name or "system",
        action=action,
        step=step,
        reason=reason.strip(),
        status_before=before,
        status_after=after,
        effective=effective,
    )
    SagaEvent.objects.create(
        saga=saga,
        kind=SagaEvent.Kind.OPERATOR,
        step=step,
        status=after,
        actor=name or "system",
        reason=reason.strip(),
        detail={"action": action, "before": before, "effective": effective},
        created_at=timezone.now(),
    )
    return intervention


def _guard_lease(saga: SagaInstance) -> None:
    now = timezone.now()
    if (
        saga.status in SagaInstance.ACTIVE
        and saga.lease_expires_at is not None
        and saga.lease_expires_at >= now
    ):
        raise SagaBusy(f"saga {saga.pk} is being run by {saga.lease_owner}; try again shortly")


def _finish(saga: SagaInstance, effective: bool) -> None:
    if effective:
        transaction.on_commit(lambda: enqueue_run(saga.pk, saga.priority))


@transaction.atomic
def saga_retry_now(*, saga_id: object, actor: Any, reason: str) -> Intervention:
    """Run a saga that waits for a delayed retry (or lost its task) now."""
    saga = SagaInstance.objects.get(pk=saga_id)
    _guard_lease(saga)
    now = timezone.now()
    effective = bool(
        SagaInstance.objects.filter(pk=saga_id, status__in=SagaInstance.ACTIVE)
        .filter(_free_lease(now))
        .update(wake_at=None, updated_at=now)
    )
    if effective:
        SagaStep.objects.filter(saga_id=saga_id, next_attempt_at__isnull=False).update(
            next_attempt_at=None
        )
    intervention = _audit(
        saga=saga,
        actor=actor,
        action="retry_now",
        reason=reason,
        before=saga.status,
        after=saga.status,
        effective=effective,
    )
    _finish(saga, effective)
    return intervention


@transaction.atomic
def saga_resume(*, saga_id: object, actor: Any, reason: str) -> Intervention:
    """Take a dead-lettered saga out of the queue and let it carry on: exhausted
    compensations start again with a fresh retry budget; a step after the pivot that gave up
    is retried forward."""
    saga = SagaInstance.objects.get(pk=saga_id)
    now = timezone.now()
    compensation_failed = SagaStep.objects.filter(
        saga_id=saga_id, compensation_status__in=[Comp.FAILED, Comp.COMPENSATING]
    ).exists()
    target = Status.COMPENSATING if compensation_failed else Status.EXECUTING
    effective = bool(
        SagaInstance.objects.filter(pk=saga_id, status=Status.FAILED).update(
            status=target,
            dead_lettered_at=None,
            dead_letter_reason="",
            completed_at=None,
            wake_at=None,
            updated_at=now,
            deadline=max(saga.deadline, now) if target == Status.EXECUTING else saga.deadline,
        )
    )
    if effective:
        if compensation_failed:
            SagaStep.objects.filter(
                saga_id=saga_id, compensation_status__in=[Comp.FAILED, Comp.COMPENSATING]
            ).update(compensation_status=Comp.NONE, compensation_attempts=0, next_attempt_at=None)
        else:
            SagaStep.objects.filter(saga_id=saga_id, status=SagaStep.Status.FAILED).update(
                attempts=0, next_attempt_at=None
            )
    if effective:
        from sagas.deadletters import dead_letter_index_remove

        transaction.on_commit(lambda: dead_letter_index_remove(saga_id))
    intervention = _audit(
        saga=saga,
        actor=actor,
        action="resume",
        reason=reason,
        before=saga.status,
        after=target if effective else saga.status,
        effective=effective,
    )
    _finish(saga, effective)
    return intervention


def _pivot_passed(saga: SagaInstance) -> bool:
    definition = registry.get(saga.definition, saga.version)
    pivot = definition.pivot_index
    if pivot is None:
        return False
    return SagaStep.objects.filter(
        saga=saga, name=definition.steps[pivot].name, status=SagaStep.Status.COMPLETED
    ).exists()


def _compensate(*, saga_id: object, actor: Any, reason: str, action: str) -> Intervention:
    saga = SagaInstance.objects.get(pk=saga_id)
    _guard_lease(saga)
    if saga.status in (Status.STARTED, Status.EXECUTING) and _pivot_passed(saga):
        raise InvalidIntervention(
            "the saga passed its pivot: it can only go forward", saga_id=str(saga_id)
        )
    now = timezone.now()
    effective = bool(
        SagaInstance.objects.filter(pk=saga_id, status__in=[Status.STARTED, Status.EXECUTING])
        .filter(_free_lease(now))
        .update(
            status=Status.COMPENSATING,
            error_code=f"operator_{action}",
            error_message=reason.strip(),
            wake_at=None,
            updated_at=now,
        )
    )
    if effective:
        SagaStep.objects.filter(saga_id=saga_id, next_attempt_at__isnull=False).update(
            next_attempt_at=None
        )
    intervention = _audit(
        saga=saga,
        actor=actor,
        action=action,
        reason=reason,
        before=saga.status,
        after=Status.COMPENSATING if effective else saga.status,
        effective=effective,
    )
    _finish(saga, effective)
    return intervention


@transaction.atomic
def saga_compensate(*, saga_id: object, actor: Any, reason: str) -> Intervention:
    """Force an unfinished saga that has not passed its pivot to compensate."""
    return _compensate(saga_id=saga_id, actor=actor, reason=reason, action="compensate")


@transaction.atomic
def saga_cancel(*, saga_id: object, actor: Any, reason: str) -> Intervention:
    """Cancel an unfinished saga: what it did is compensated."""
    return _compensate(saga_id=saga_id, actor=actor, reason=reason, action="cancel")


@transaction.atomic
def saga_skip_step(*, saga_id: object, step: str, actor: Any, reason: str) -> Intervention:
    """Mark a step that has not completed as SKIPPED and carry on after it. A skipped step
    did nothing, so nothing of it is compensated later."""
    saga = SagaInstance.objects.get(pk=saga_id)
    _guard_lease(saga)
    definition = registry.get(saga.definition, saga.version)
    try:
        index = definition.index_of(step)
    except ValueError:
        raise InvalidIntervention(f"saga has no step {step!r}") from None
    forward_failure = (
        saga.status == Status.FAILED
        and not SagaStep.objects.filter(saga_id=saga_id, compensation_status=Comp.FAILED).exists()
    )
    if saga.status not in (Status.STARTED, Status.EXECUTING) and not forward_failure:
        raise InvalidIntervention("only a saga going forward can skip a step")
    now = timezone.now()
    row, _ = SagaStep.objects.get_or_create(saga_id=saga_id, name=step, defaults={"index": index})
    skipped = (
        SagaStep.objects.filter(pk=row.pk, compensation_status=Comp.NONE)
        .exclude(status__in=[SagaStep.Status.COMPLETED, SagaStep.Status.SKIPPED])
        .update(status=SagaStep.Status.SKIPPED, next_attempt_at=None, finished_at=now)
    )
    effective = bool(skipped) and bool(
        SagaInstance.objects.filter(pk=saga_id, status=saga.status)
        .filter(_free_lease(now))
        .update(
            status=Status.EXECUTING,
            dead_lettered_at=None,
            dead_letter_reason="",
            completed_at=None,
            wake_at=None,
            updated_at=now,
        )
    )
    if skipped and not effective:
        transaction.set_rollback(True)
        raise SagaBusy(f"saga {saga_id} changed while skipping; try again")
    intervention = _audit(
        saga=saga,
        actor=actor,
        action="skip_step",
        step=step,
        reason=reason,
        before=saga.status,
        after=Status.EXECUTING if effective else saga.status,
        effective=effective,
    )
    if effective:
        SagaEvent.objects.create(
            saga=saga,
            kind=SagaEvent.Kind.STEP_SKIPPED,
            step=step,
            actor=_actor_name(actor) or "system",
            reason=reason.strip(),
            created_at=now,
        )
    _finish(saga, effective)
    return intervention
