"""A new saga's first run (PostgreSQL): its task carries the row its start wrote, and the
first step's bookkeeping statement takes the lease; anything else falls back to the usual
run, with nothing of the first try kept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sagas import fastpath
from sagas.engine import saga_run, saga_start
from sagas.models import SagaEvent, SagaInstance, SagaStep
from sagas.services import saga_cancel, saga_skip_step
from tests.concurrency import run_concurrently
from tests.sagas.helpers import effects, history, make_counters

S = SagaInstance.Status
K = SagaEvent.Kind
STEPS = ["s1", "s2", "s3", "s4", "s5"]
LEASE_UPDATE = "UPDATE sagas_sagainstance SET lease_owner"


@pytest.fixture(autouse=True)
def postgresql_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("the first run without a lease statement is PostgreSQL's")
    make_counters(*STEPS)


def new(**data) -> tuple[SagaInstance, tuple]:
    instance = saga_start("test.five_steps", data=data, business_key="first", enqueue=False)
    return instance, fastpath.saga_snapshot(instance)


def first_run(instance: SagaInstance, snapshot: dict) -> SagaInstance:
    saga_run(instance.pk, first=snapshot)
    instance.refresh_from_db()
    return instance


def usual_run(**data) -> SagaInstance:
    instance, _ = new(**data)
    saga_run(instance.pk)
    instance.refresh_from_db()
    return instance


def test_the_first_run_takes_the_lease_with_the_first_step_and_reads_nothing():
    instance, snapshot = new()

    with CaptureQueriesContext(connection) as seen:
        saga_run(instance.pk, first=snapshot)

    saga = SagaInstance.objects.get(pk=instance.pk)
    statements = [query["sql"] for query in seen.captured_queries]
    assert not any(sql.startswith(LEASE_UPDATE) for sql in statements)
    assert not any(sql.startswith("SELECT") and "sagas_sagainstance" in sql for sql in statements)
    assert saga.status == S.COMPLETED and saga.runs == 1 and saga.lease_owner == ""
    assert effects(saga) == {(name, "action"): 1 for name in STEPS}
    assert history(saga) == history(usual_run())


@pytest.mark.django_db(transaction=True)
def test_the_first_step_commits_with_its_lease_in_one_round_trip(folded_commits):
    saga = first_run(*new())

    assert saga.status == S.COMPLETED
    assert folded_commits == [True] * 5


def test_a_saga_that_another_runner_holds_is_left_alone_with_nothing_done():
    instance, snapshot = new()
    SagaInstance.objects.filter(pk=instance.pk).update(
        status=S.EXECUTING,
        runs=1,
        lease_owner="another-runner",
        lease_expires_at=timezone.now() + timedelta(minutes=5),
    )

    assert saga_run(instance.pk, first=snapshot) is None

    assert effects(instance) == {}
    assert not SagaStep.objects.filter(saga=instance).exists()
    instance.refresh_from_db()
    assert instance.lease_owner == "another-runner" and instance.runs == 1


def test_a_saga_no_longer_new_runs_the_usual_way_from_what_its_row_says():
    # Its first runner died after taking the lease: the row says so, the task does not.
    instance, snapshot = new()
    SagaInstance.objects.filter(pk=instance.pk).update(
        status=S.EXECUTING,
        runs=1,
        lease_owner="dead-runner",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )

    saga = first_run(instance, snapshot)

    assert saga.status == S.COMPLETED and saga.runs == 2
    assert effects(saga) == {(name, "action"): 1 for name in STEPS}


def test_what_an_operator_did_before_the_first_run_stands():
    # The task's copy of the row is older than both: the row decides.
    cancelled, cancelled_snapshot = new()
    saga_cancel(saga_id=cancelled.pk, actor="ops", reason="customer called")
    skipped, skipped_snapshot = new()
    saga_skip_step(saga_id=skipped.pk, step="s1", actor="ops", reason="done by hand")

    cancelled = first_run(cancelled, cancelled_snapshot)
    skipped = first_run(skipped, skipped_snapshot)

    assert cancelled.status == S.COMPENSATED
    assert effects(cancelled) == {}
    assert skipped.status == S.COMPLETED
    assert effects(skipped) == {(name, "action"): 1 for name in STEPS[1:]}
    assert SagaStep.objects.get(saga=skipped, name="s1").status == SagaStep.Status.SKIPPED


def test_a_first_step_that_fails_fails_once_under_the_lease():
    saga = first_run(*new(fail="s1"))

    assert saga.status == S.COMPENSATED
    assert history(saga) == history(usual_run(fail="s1"))
    assert SagaStep.objects.get(saga=saga, name="s1").attempts == 1


def test_a_transient_first_step_is_retried_on_its_policy():
    saga = first_run(*new(transient={"s1": 2}))

    assert saga.status == S.COMPLETED
    assert SagaStep.objects.get(saga=saga, name="s1").attempts == 3
    assert effects(saga)[("s1", "action")] == 1


@pytest.mark.django_db(transaction=True)
def test_ten_first_runs_at_once_without_the_redis_gate_run_each_step_once(settings):
    # Only the row decides here: the first step's lease condition and its unique step row.
    settings.SAGAS = {**settings.SAGAS, "REDIS_LOCKS": False}
    instance, snapshot = new()

    results = run_concurrently(lambda i: saga_run(instance.pk, first=snapshot), 10)

    assert not [r for r in results if isinstance(r, BaseException)]
    assert results.count(S.COMPLETED) == 1
    assert effects(instance) == {(name, "action"): 1 for name in STEPS}
    instance.refresh_from_db()
    assert instance.status == S.COMPLETED


def test_a_task_whose_row_is_in_another_shape_runs_the_usual_way():
    instance, _ = new()

    assert saga_run(instance.pk, first={"status": "STARTED"}) == S.COMPLETED
    assert effects(instance) == {(name, "action"): 1 for name in STEPS}


def test_the_task_carries_the_row_as_plain_values():
    instance, snapshot = new(order=7)

    assert all(isinstance(v, str | int | dict) for v in snapshot)
    now = timezone.now()
    runner_instance = fastpath.first_run_instance(
        str(instance.pk), snapshot, owner="me", expires_at=now, now=now
    )
    for name in ("id", "definition", "version", "business_key", "context", "deadline"):
        assert getattr(runner_instance, name) == getattr(instance, name), name
    assert runner_instance.created_at == instance.created_at
