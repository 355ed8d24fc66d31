from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest
from django.db import transaction
from django.utils import timezone

from sagas.engine import saga_run, saga_start
from sagas.models import SagaEvent, SagaInstance, SagaStep
from tests.concurrency import run_concurrently
from tests.sagas.helpers import effects, history, make_counters, run, start
from tests.sagatest.models import Counter
from tests.workers import wait_for

S = SagaInstance.Status
K = SagaEvent.Kind
STEPS = ["s1", "s2", "s3", "s4", "s5"]


@pytest.fixture(autouse=True)
def counters(db):
    make_counters(*STEPS, "p1", "p2", "p3", "t1", "t2", "t3", "d1", "d2", "d3")


@pytest.mark.django_db
def test_a_five_step_saga_completes_with_each_step_done_once():
    saga = run(start("test.five_steps"))

    assert saga.status == S.COMPLETED
    assert effects(saga) == {(name, "action"): 1 for name in STEPS}
    rows = SagaStep.objects.filter(saga=saga).order_by("index")
    assert [(r.name, r.status, r.attempts) for r in rows] == [
        (name, "COMPLETED", 1) for name in STEPS
    ]
    assert rows[0].output == {"done": "s1", "attempt": 1}
    assert saga.lease_owner == "" and saga.completed_at is not None


@pytest.mark.django_db
def test_deleting_a_saga_deletes_its_steps_and_history():
    # Steps and events have no database-level constraint to the saga: the ORM cascades.
    saga = run(start("test.five_steps"))
    other = run(start("test.five_steps"))

    saga.delete()

    assert not SagaStep.objects.filter(saga_id=saga.pk).exists()
    assert not SagaEvent.objects.filter(saga_id=saga.pk).exists()
    assert SagaStep.objects.filter(saga=other).count() == 5
    assert SagaEvent.objects.filter(saga=other).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_a_business_error_at_step_k_compensates_the_earlier_steps_in_reverse(k):
    failing = f"s{k}"

    saga = run(start("test.five_steps", fail=failing))

    assert saga.status == S.COMPENSATED
    assert saga.error_code == "test_business_error"
    compensated = [step for kind, step in history(saga) if kind == K.STEP_COMPENSATED]
    assert compensated == [f"s{i}" for i in range(k - 1, 0, -1)]
    for i in range(1, 6):
        assert Counter.objects.get(name=f"s{i}").value == 0
    failed = SagaStep.objects.get(saga=saga, name=failing)
    assert (failed.status, failed.attempts) == ("FAILED", 1)  # business errors are not retried
    assert failed.compensation_status == "EMPTY"  # the fence: nothing took effect


@pytest.mark.django_db
def test_a_transient_failure_that_clears_after_two_attempts_completes_on_the_third():
    saga = run(start("test.five_steps", transient={"s3": 2}))

    assert saga.status == S.COMPLETED
    s3 = SagaStep.objects.get(saga=saga, name="s3")
    assert (s3.status, s3.attempts) == ("COMPLETED", 3)
    assert effects(saga)[("s3", "action")] == 1
    assert [kind for kind, step in history(saga) if step == "s3"] == [
        K.STEP_FAILED,
        K.RETRY_SCHEDULED,
        K.STEP_FAILED,
        K.RETRY_SCHEDULED,
        K.STEP_COMPLETED,
    ]


@pytest.mark.django_db
def test_transient_failures_past_the_retry_budget_compensate():
    saga = run(start("test.five_steps", transient={"s2": 10}))

    assert saga.status == S.COMPENSATED
    assert SagaStep.objects.get(saga=saga, name="s2").attempts == 4  # 1 + 3 retries
    assert effects(saga) == {("s1", "action"): 1, ("s1", "compensation"): 1}


@pytest.mark.django_db
def test_a_compensation_that_always_fails_ends_failed_and_the_others_still_run():
    saga = run(start("test.five_steps", fail="s4", compensation_fails=["s2"]))

    assert saga.status == S.FAILED
    assert saga.dead_lettered_at is not None
    assert "s2" in saga.dead_letter_reason
    assert "cannot reach its service" in saga.dead_letter_reason
    s2 = SagaStep.objects.get(saga=saga, name="s2")
    assert (s2.compensation_status, s2.compensation_attempts) == ("FAILED", 3)  # 1 + 2 retries
    assert effects(saga)[("s1", "compensation")] == 1
    assert effects(saga)[("s3", "compensation")] == 1
    assert [kind for kind, _ in history(saga)][-2:] == [K.FAILED, K.DEAD_LETTERED]


@pytest.mark.django_db
def test_steps_after_the_pivot_are_retried_forward_never_compensated():
    saga = run(start("test.pivoted", fail="p3"))

    assert saga.status == S.FAILED
    assert "after the pivot" in saga.dead_letter_reason
    assert not any(kind == "compensation" for _, kind in effects(saga))


@pytest.mark.django_db
def test_a_step_that_overruns_its_timeout_is_a_transient_failure_that_compensates():
    saga = run(start("test.timed", sleep={"t2": 0.8}))

    assert saga.status == S.COMPENSATED
    t2 = SagaStep.objects.get(saga=saga, name="t2")
    assert t2.attempts == 4
    assert t2.error_code == "StepTimeout"
    assert effects(saga) == {("t1", "action"): 1, ("t1", "compensation"): 1}


@pytest.mark.django_db
def test_a_saga_past_its_deadline_times_out_and_compensates():
    saga = start("test.five_steps")
    saga_run(saga.pk)  # completes; start another and let it pass its deadline first
    late = start("test.five_steps")
    SagaInstance.objects.filter(pk=late.pk).update(deadline=timezone.now() - timedelta(seconds=1))

    late = run(late)

    assert late.status == S.COMPENSATED
    assert late.error_code == "deadline_exceeded"
    assert (K.TIMED_OUT, "") in history(late)


@pytest.mark.django_db
def test_the_history_reads_as_the_story_of_the_saga():
    saga = run(start("test.five_steps", fail="s3"))

    assert history(saga) == [
        (K.STARTED, ""),
        (K.STEP_COMPLETED, "s1"),
        (K.STEP_COMPLETED, "s2"),
        (K.STEP_FAILED, "s3"),
        (K.COMPENSATION_STARTED, ""),
        (K.STEP_COMPENSATED, "s2"),
        (K.STEP_COMPENSATED, "s1"),
        (K.COMPENSATION_EMPTY, "s3"),
        (K.COMPENSATED, ""),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_runner_that_lost_its_lease_during_the_last_step_leaves_it_to_the_new_owner():
    from django.db import connection

    if connection.vendor == "sqlite":
        pytest.skip("the takeover writes from another connection: SQLite's one writer waits")
    from tests.sagatest.sagas import COMMITTED

    COMMITTED.clear()
    saga = start("test.five_steps", lose_lease="s5", on_commit="s5")

    assert saga_run(saga.pk) is None  # the finishing write found another owner
    assert COMMITTED == ["s5"]  # the step committed, and so its callbacks ran

    saga.refresh_from_db()
    assert saga.status == S.EXECUTING
    assert saga.lease_owner == "another-runner"
    # The step committed with its bookkeeping; the saga's own ending did not.
    assert SagaStep.objects.get(saga=saga, name="s5").status == SagaStep.Status.COMPLETED
    assert (K.STEP_COMPLETED, "s5") in history(saga)
    assert (K.COMPLETED, "") not in history(saga)

    # The other owner's lease runs out; the next runner finds s5 done and finishes the saga.
    SagaInstance.objects.filter(pk=saga.pk).update(
        lease_owner="", lease_expires_at=None, context={}
    )
    assert saga_run(saga.pk) == S.COMPLETED
    assert effects(saga) == {(name, "action"): 1 for name in STEPS}
    assert history(saga).count((K.COMPLETED, "")) == 1
    assert history(saga).count((K.STEP_COMPLETED, "s5")) == 1


@pytest.mark.django_db
def test_each_step_renews_the_lease_when_it_would_not_cover_the_next_step(settings):
    from tests.sagatest.sagas import LEASES_SEEN

    # A lease of 5 s (step timeout) + 5 s (margin) never covers the next step in full once
    # a step has run, so every step renews it.
    settings.SAGAS = {**settings.SAGAS, "LEASE_SECONDS": 1, "LEASE_MARGIN_SECONDS": 5}
    LEASES_SEEN.clear()

    saga = run(start("test.five_steps", watch_lease=True))

    assert saga.status == S.COMPLETED
    assert len(LEASES_SEEN) == 5
    assert all(later > earlier for earlier, later in pairwise(LEASES_SEEN))


@pytest.mark.django_db(transaction=True)
def test_ten_runners_on_the_same_saga_at_once_run_each_step_once():
    make_counters(*STEPS)
    saga = start("test.five_steps")

    run_concurrently(lambda i: saga_run(saga.pk), threads=10)

    saga.refresh_from_db()
    if saga.status != S.COMPLETED:  # every runner may have found it leased; one more run
        saga = run(saga)
    assert saga.status == S.COMPLETED
    assert effects(saga) == {(name, "action"): 1 for name in STEPS}


@pytest.mark.django_db
def test_a_late_action_after_its_compensation_is_refused():
    saga = start("test.five_steps")
    SagaStep.objects.create(
        saga=saga, name="s1", index=0, status="FAILED", compensation_status="EMPTY"
    )

    saga = run(saga)

    assert effects(saga)[("s1", "action")] == 0
    assert (K.LATE_ACTION_REFUSED, "s1") in history(saga)
    assert saga.status == S.COMPENSATED


@pytest.mark.django_db(transaction=True)
def test_a_start_under_a_taken_dedup_key_returns_the_first_saga_and_writes_nothing():
    first = saga_start("test.five_steps", data={}, dedup_key="order:1:place", enqueue=False)

    again = saga_start("test.five_steps", data={"n": 2}, dedup_key="order:1:place", enqueue=False)

    assert again.pk == first.pk and again.context == {}
    assert SagaInstance.objects.count() == 1
    assert SagaEvent.objects.filter(kind=K.STARTED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_taken_dedup_key_leaves_the_callers_transaction_usable():
    first = saga_start("test.five_steps", data={}, dedup_key="order:2:place", enqueue=False)

    with transaction.atomic():
        again = saga_start("test.five_steps", data={}, dedup_key="order:2:place", enqueue=False)
        # The caller goes on in the same transaction and commits its own work.
        other = saga_start("test.five_steps", data={}, enqueue=False)

    assert again.pk == first.pk
    assert set(SagaInstance.objects.values_list("pk", flat=True)) == {first.pk, other.pk}


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_starts_under_one_dedup_key_make_one_saga():
    def start_one(_: int) -> object:
        return saga_start("test.five_steps", data={}, dedup_key="order:3:place", enqueue=False).pk

    ids = run_concurrently(start_one, 10)

    assert len(set(ids)) == 1
    assert SagaInstance.objects.count() == 1
    assert SagaEvent.objects.filter(kind=K.STARTED).count() == 1


@pytest.mark.django_db
def test_a_steps_time_limit_gives_the_workers_own_task_alarm_back():
    import signal

    fired: list[int] = []

    def task_timeout(signum, frame):  # the worker's handler for its task timeout
        fired.append(signum)

    previous = signal.signal(signal.SIGALRM, task_timeout)
    signal.setitimer(signal.ITIMER_REAL, 120)
    try:
        saga = run(start("test.five_steps"))

        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert saga.status == S.COMPLETED
        assert 0 < left <= 120  # still armed, less what the steps took
        assert signal.getsignal(signal.SIGALRM) is task_timeout

        # An alarm that falls due during a step still goes off, right after the step.
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        run(start("test.five_steps", sleep={"s1": 0.2}))
        wait_for(lambda: fired, timeout=10, what="the task alarm")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
