from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from sagas.deadletters import (
    INDEX_ZSET,
    dead_letter_list,
    dead_letter_resolve,
    dead_letter_retry,
    dead_letter_sweep,
    dead_letters,
)
from sagas.engine import sagas_expire, sagas_recover
from sagas.models import Intervention, SagaInstance
from tests.concurrency import run_concurrently
from tests.sagas.helpers import effects, make_counters, run, start

S = SagaInstance.Status
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def setup(transactional_db):
    make_counters("s1", "s2", "s3", "s4", "s5", "d1", "d2", "d3")


@pytest.fixture
def operator(transactional_db):
    return get_user_model().objects.create_user("ops", password="x", is_staff=True)


@pytest.fixture
def redis(settings):
    if not settings.REDIS_URL:
        pytest.skip("the dead-letter index lives in Redis")
    from django_redis import get_redis_connection

    return get_redis_connection("default")


@pytest.fixture
def enqueued(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(
        "sagas.engine.enqueue_run", lambda saga_id, priority=1, **_: sent.append(str(saga_id))
    )
    return sent


def index_ids(redis) -> set[str]:
    return {member.decode() for member in redis.zrange(INDEX_ZSET, 0, -1)}


def test_an_exhausted_compensation_lands_in_the_queue_and_a_retry_finishes_it(redis, operator):
    saga = run(start("test.five_steps", fail="s3", compensation_fails=["s1"]))

    assert saga.status == S.FAILED
    assert "compensation of s1 failed" in saga.dead_letter_reason
    assert [row["id"] for row in dead_letter_list()] == [str(saga.pk)]
    assert index_ids(redis) == {str(saga.pk)}

    SagaInstance.objects.filter(pk=saga.pk).update(context={"fail": "s3"})  # fault removed
    dead_letter_retry(saga_id=saga.pk, actor=operator, reason="payment service is back")
    saga = run(saga)

    assert saga.status == S.COMPENSATED
    assert effects(saga)[("s1", "compensation")] == 1
    assert list(dead_letters()) == []
    assert index_ids(redis) == set()


def test_the_index_is_rebuilt_from_the_database_after_redis_lost_it(redis):
    failed = [
        run(start("test.five_steps", fail="s2", compensation_fails=["s1"])) for _ in range(3)
    ]
    redis.flushall()

    listed = dead_letter_list()

    assert {row["id"] for row in listed} == {str(s.pk) for s in failed}
    assert index_ids(redis) == {str(s.pk) for s in failed}
    assert all(row["reason"] for row in listed)


def test_resolving_a_dead_letter_closes_it_once_with_an_audit_row(redis, operator):
    saga = run(start("test.five_steps", fail="s2", compensation_fails=["s1"]))

    results = run_concurrently(
        lambda i: dead_letter_resolve(saga_id=saga.pk, actor=operator, reason="refunded by hand"),
        threads=2,
    )

    assert sorted(r.effective for r in results) == [False, True]
    saga.refresh_from_db()
    assert (saga.resolved_by, saga.resolution) == ("ops", "refunded by hand")
    assert dead_letter_list() == []
    assert index_ids(redis) == set()
    assert Intervention.objects.filter(saga=saga, action="resolve_dead_letter").count() == 2


def test_a_saga_failing_for_more_than_three_days_is_dead_lettered():
    saga = start("test.five_steps")
    SagaInstance.objects.filter(pk=saga.pk).update(
        status=S.EXECUTING,
        created_at=timezone.now() - timedelta(days=3, minutes=1),
        error_message="gateway unreachable",
    )
    fresh = start("test.five_steps")

    assert dead_letter_sweep() == 1

    saga.refresh_from_db()
    assert saga.status == S.FAILED
    assert "more than 3 days" in saga.dead_letter_reason
    assert "gateway unreachable" in saga.dead_letter_reason
    assert SagaInstance.objects.get(pk=fresh.pk).status == S.STARTED


def test_a_poison_saga_is_dead_lettered_by_recovery_and_does_not_block_others(enqueued):
    poison = start("test.five_steps")
    healthy = start("test.five_steps")
    past = timezone.now() - timedelta(seconds=1)
    SagaInstance.objects.filter(pk=poison.pk).update(
        status=S.EXECUTING, lease_owner="dead", lease_expires_at=past, recovery_attempts=10
    )
    SagaInstance.objects.filter(pk=healthy.pk).update(
        status=S.EXECUTING, lease_owner="dead", lease_expires_at=past
    )

    assert sagas_recover() == [str(healthy.pk)]

    poison.refresh_from_db()
    assert poison.status == S.FAILED
    assert poison.error_code == "recovery_exhausted"
    assert enqueued == [str(healthy.pk)]


def test_a_saga_waiting_past_its_deadline_is_handed_over_and_times_out(enqueued):
    saga = run(start("test.delayed", transient={"d3": 1}))
    assert saga.wake_at is not None
    SagaInstance.objects.filter(pk=saga.pk).update(deadline=timezone.now() - timedelta(seconds=1))

    assert sagas_expire() == [str(saga.pk)]
    saga = run(saga)

    assert saga.status == S.COMPENSATED
    assert saga.error_code == "deadline_exceeded"
