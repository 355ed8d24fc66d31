from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sagas.engine import enqueue_run, sagas_recover, sagas_wake_due
from sagas.models import SagaEvent, SagaInstance, SagaStep
from tests.concurrency import run_concurrently
from tests.sagas.helpers import effects, make_counters, run, start

S = SagaInstance.Status


@pytest.fixture(autouse=True)
def counters(db):
    make_counters("s1", "s2", "s3", "s4", "s5", "d1", "d2", "d3")


@pytest.fixture
def enqueued(monkeypatch):
    """What would have gone to the broker, without a worker taking it."""
    sent: list[str] = []
    monkeypatch.setattr(
        "sagas.engine.enqueue_run", lambda saga_id, priority=1, **_: sent.append(str(saga_id))
    )
    return sent


@pytest.mark.django_db
def test_recovery_resumes_a_saga_whose_worker_died_holding_its_lease(enqueued):
    saga = start("test.five_steps")
    past = timezone.now() - timedelta(seconds=1)
    SagaInstance.objects.filter(pk=saga.pk).update(
        status=S.EXECUTING, lease_owner="dead-worker", lease_expires_at=past
    )

    assert sagas_recover() == [str(saga.pk)]
    assert enqueued == [str(saga.pk)]
    saga = run(saga)

    assert saga.status == S.COMPLETED
    assert saga.recovery_attempts == 1
    assert SagaEvent.objects.filter(saga=saga, kind=SagaEvent.Kind.RECOVERED).count() == 1


@pytest.mark.django_db
def test_recovery_continues_a_saga_left_compensating(enqueued):
    saga = start("test.five_steps", fail="s3")
    run(saga)
    # Rewind: as if the worker died after compensating s2 but before s1.
    SagaStep.objects.filter(saga=saga, name="s1").update(
        status="COMPLETED", compensation_status="NONE"
    )
    SagaInstance.objects.filter(pk=saga.pk).update(
        status=S.COMPENSATING,
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )

    sagas_recover()
    saga = run(saga)

    assert saga.status == S.COMPENSATED
    assert effects(saga)[("s1", "compensation")] == 2  # once before the rewind, once now
    assert effects(saga)[("s2", "compensation")] == 1


@pytest.mark.django_db
def test_recovery_leaves_live_leases_and_finished_sagas_alone(enqueued):
    live = start("test.five_steps")
    SagaInstance.objects.filter(pk=live.pk).update(
        status=S.EXECUTING,
        lease_owner="alive",
        lease_expires_at=timezone.now() + timedelta(minutes=1),
    )
    done = run(start("test.five_steps"))
    SagaInstance.objects.filter(pk=done.pk).update(updated_at=timezone.now() - timedelta(days=1))

    assert sagas_recover() == []


@pytest.mark.django_db(transaction=True)
def test_two_recovery_scans_at_once_resume_each_saga_once(enqueued):
    sagas = [start("test.five_steps") for _ in range(20)]
    SagaInstance.objects.update(
        status=S.EXECUTING,
        lease_owner="dead",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )

    results = run_concurrently(lambda i: sagas_recover(), threads=2)

    resumed = [saga_id for result in results for saga_id in result]
    assert sorted(resumed) == sorted(str(s.pk) for s in sagas)
    assert sorted(enqueued) == sorted(resumed)


@pytest.mark.django_db
def test_the_timer_wakes_only_due_sagas_and_each_once(enqueued):
    due = start("test.delayed")
    later = start("test.delayed")
    SagaInstance.objects.filter(pk=due.pk).update(wake_at=timezone.now() - timedelta(seconds=1))
    SagaInstance.objects.filter(pk=later.pk).update(wake_at=timezone.now() + timedelta(hours=1))

    assert sagas_wake_due() == [str(due.pk)]
    assert sagas_wake_due() == []
    assert enqueued == [str(due.pk)]


@pytest.mark.django_db
def test_priority_routes_a_saga_to_its_queue(settings):
    from django_redis import get_redis_connection

    if not settings.REDIS_URL:
        pytest.skip("queue routing is checked on the Redis broker")
    settings.SAGAS = {**settings.SAGAS, "PRIORITY_QUEUES": {"HIGH": "l2c-test-high"}}
    redis = get_redis_connection("default")
    redis.delete("django_q:l2c-test-high:q")

    enqueue_run("00000000-0000-0000-0000-000000000001", priority=2)
    enqueue_run("00000000-0000-0000-0000-000000000002", priority=1)

    assert redis.llen("django_q:l2c-test-high:q") == 1
    redis.delete("django_q:l2c-test-high:q")


@pytest.mark.django_db
def test_migrate_installs_the_engine_schedules():
    from django_q.models import Schedule

    names = set(Schedule.objects.values_list("name", flat=True))

    assert {
        "sagas: recover lost sagas",
        "sagas: sagas past their deadline",
        "sagas: dead-letter sweep",
        "sagas: outbox relay",
    } <= names
    recover = Schedule.objects.get(name="sagas: recover lost sagas")
    assert (recover.func, recover.schedule_type, recover.minutes) == (
        "sagas.tasks.recover_sagas",
        Schedule.MINUTES,
        1,
    )
