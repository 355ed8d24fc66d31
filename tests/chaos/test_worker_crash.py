"""Kill -9 a real worker at named points of a step and check every effect happened once."""

from __future__ import annotations

import threading

import pytest

from sagas.engine import enqueue_run, saga_start
from sagas.models import SagaInstance
from tests.sagas.helpers import effects, make_counters
from tests.workers import wait_for

STEPS = ["s1", "s2", "s3", "s4", "s5"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def status_of(saga: SagaInstance) -> str:
    return SagaInstance.objects.values_list("status", flat=True).get(pk=saga.pk)


def terminal(saga: SagaInstance) -> bool:
    return status_of(saga) in SagaInstance.TERMINAL


@pytest.mark.parametrize("point", ["s3.after_commit", "s3.before_commit"])
def test_a_worker_killed_around_a_step_commit_resumes_with_every_effect_once(qcluster, point):
    make_counters(*STEPS)
    qcluster.start(SAGA_FAULTS=f"{point}=kill")
    saga = saga_start("test.five_steps", data={}, business_key="crash")

    # The worker dies holding the lease: wait for the step state the crash point implies.
    expected_done = 3 if point.endswith("after_commit") else 2
    wait_for(
        lambda: (
            effects(saga)[(STEPS[expected_done - 1], "action")] == 1
            and SagaInstance.objects.get(pk=saga.pk).lease_owner
        ),
        timeout=60,
        what=lambda: f"the crash at {point}\n{qcluster.log_tail()}",
    )
    qcluster.kill()
    assert status_of(saga) == "EXECUTING"

    # No faults this time. The new cluster's recovery takes the saga over once the dead
    # worker's lease has expired.
    qcluster.start()
    wait_for(
        lambda: terminal(saga), timeout=60, what=lambda: f"the saga to end\n{qcluster.log_tail()}"
    )

    assert status_of(saga) == "COMPLETED"
    assert effects(saga) == {(name, "action"): 1 for name in STEPS}
    assert SagaInstance.objects.get(pk=saga.pk).recovery_attempts == 1


def test_the_same_saga_enqueued_ten_times_at_once_runs_each_step_once(qcluster):
    make_counters(*STEPS)
    qcluster.start()
    saga = saga_start("test.five_steps", data={}, business_key="dup", enqueue=False)

    threads = [threading.Thread(target=enqueue_run, args=(saga.pk,)) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: terminal(saga), timeout=60, what=lambda: f"the saga\n{qcluster.log_tail()}")

    assert status_of(saga) == "COMPLETED"
    assert effects(saga) == {(name, "action"): 1 for name in STEPS}


def test_delayed_retries_resume_at_their_time_through_the_timer(qcluster):
    make_counters("d1", "d2", "d3")
    qcluster.start()

    saga = saga_start("test.delayed", data={"transient": {"d3": 2}}, business_key="delay")
    wait_for(lambda: terminal(saga), timeout=60, what=lambda: f"the saga\n{qcluster.log_tail()}")

    assert status_of(saga) == "COMPLETED"
    assert effects(saga)[("d3", "action")] == 1
    row = saga.steps.get(name="d3")
    assert row.attempts == 3
