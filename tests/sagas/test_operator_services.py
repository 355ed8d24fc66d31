from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from sagas.exceptions import InvalidIntervention, SagaBusy
from sagas.models import Intervention, SagaEvent, SagaInstance, SagaStep
from sagas.services import (
    saga_cancel,
    saga_compensate,
    saga_resume,
    saga_retry_now,
    saga_skip_step,
)
from tests.concurrency import run_concurrently
from tests.sagas.helpers import effects, history, make_counters, run, start

S = SagaInstance.Status


@pytest.fixture
def operator(db):
    make_counters("s1", "s2", "s3", "s4", "s5", "p1", "p2", "p3")
    return get_user_model().objects.create_user("ops", password="x", is_staff=True)


def operator_events(saga):
    return list(SagaEvent.objects.filter(saga=saga, kind=SagaEvent.Kind.OPERATOR))


@pytest.mark.django_db
def test_resume_finishes_a_dead_lettered_compensation_and_audits_who_and_why(operator):
    saga = run(start("test.five_steps", fail="s3", compensation_fails=["s1"]))
    assert saga.status == S.FAILED
    SagaInstance.objects.filter(pk=saga.pk).update(context={"fail": "s3"})  # fault removed

    intervention = saga_resume(saga_id=saga.pk, actor=operator, reason="service is back")
    saga = run(saga)

    assert saga.status == S.COMPENSATED
    assert effects(saga)[("s1", "compensation")] == 1
    assert (intervention.action, intervention.actor_name, intervention.effective) == (
        "resume",
        "ops",
        True,
    )
    assert (intervention.status_before, intervention.status_after) == ("FAILED", "COMPENSATING")
    [event] = operator_events(saga)
    assert (event.actor, event.reason) == ("ops", "service is back")


@pytest.mark.django_db(transaction=True)
def test_two_operators_resuming_at_once_produce_one_effect(operator):
    saga = run(start("test.five_steps", fail="s3", compensation_fails=["s1"]))

    results = run_concurrently(
        lambda i: saga_resume(saga_id=saga.pk, actor=operator, reason=f"try {i}"), threads=2
    )

    assert sorted(r.effective for r in results) == [False, True]
    assert Intervention.objects.filter(saga=saga).count() == 2


@pytest.mark.django_db
def test_force_compensation_undoes_a_waiting_saga(operator):
    saga = run(start("test.delayed", transient={"d3": 1}))
    assert saga.wake_at is not None  # waits for its retry

    saga_compensate(saga_id=saga.pk, actor=operator, reason="customer gave up")
    saga = run(saga)

    assert saga.status == S.COMPENSATED
    assert saga.error_code == "operator_compensate"
    assert effects(saga)[("d1", "compensation")] == 1
    assert effects(saga)[("d2", "compensation")] == 1


@pytest.mark.django_db
def test_compensation_is_refused_after_the_pivot(operator):
    saga = start("test.pivoted", transient={"p3": 99})
    saga = run(saga)
    assert saga.status == S.FAILED
    saga_resume(saga_id=saga.pk, actor=operator, reason="try again")
    saga.refresh_from_db()
    assert saga.status == S.EXECUTING

    with pytest.raises(InvalidIntervention):
        saga_compensate(saga_id=saga.pk, actor=operator, reason="undo please")


@pytest.mark.django_db
def test_skip_step_carries_a_saga_past_a_step_that_cannot_succeed(operator):
    saga = run(start("test.pivoted", fail="p3"))
    assert saga.status == S.FAILED

    saga_skip_step(saga_id=saga.pk, step="p3", actor=operator, reason="shipped by hand")
    saga = run(saga)

    assert saga.status == S.COMPLETED
    assert SagaStep.objects.get(saga=saga, name="p3").status == "SKIPPED"
    assert ("step_skipped", "p3") in history(saga)


@pytest.mark.django_db
def test_cancel_and_retry_now_are_audited_and_refuse_a_running_saga(operator):
    saga = run(start("test.delayed", transient={"d1": 1}))
    saga_retry_now(saga_id=saga.pk, actor=operator, reason="gateway is back")
    saga.refresh_from_db()
    assert saga.wake_at is None

    SagaInstance.objects.filter(pk=saga.pk).update(
        lease_owner="worker-1", lease_expires_at=saga.deadline
    )
    with pytest.raises(SagaBusy):
        saga_cancel(saga_id=saga.pk, actor=operator, reason="stop")
    SagaInstance.objects.filter(pk=saga.pk).update(lease_owner="", lease_expires_at=None)

    saga_cancel(saga_id=saga.pk, actor=operator, reason="stop")
    saga = run(saga)
    assert saga.status == S.COMPENSATED
    assert [i.action for i in Intervention.objects.filter(saga=saga).order_by("id")] == [
        "retry_now",
        "cancel",
    ]


@pytest.mark.django_db
def test_an_intervention_needs_a_reason(operator):
    saga = run(start("test.five_steps", fail="s2", compensation_fails=["s1"]))
    with pytest.raises(InvalidIntervention):
        saga_resume(saga_id=saga.pk, actor=operator, reason="  ")
    assert not Intervention.objects.exists()
