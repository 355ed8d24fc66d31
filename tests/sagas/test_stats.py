from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sagas.models import SagaInstance
from sagas.stats import saga_health, saga_statistics
from tests.sagas.helpers import make_counters, run, start

S = SagaInstance.Status


@pytest.fixture(autouse=True)
def counters(db):
    make_counters("s1", "s2", "s3", "s4", "s5")


def set_times(saga, *, created_ago: float, took: float | None = None, updated_ago: float = 0):
    now = timezone.now()
    created = now - timedelta(seconds=created_ago)
    SagaInstance.objects.filter(pk=saga.pk).update(
        created_at=created,
        updated_at=now - timedelta(seconds=updated_ago),
        completed_at=None if took is None else created + timedelta(seconds=took),
    )


@pytest.mark.django_db
def test_statistics_of_a_known_data_set():
    for took in (1, 2, 3, 4):
        set_times(run(start("test.five_steps")), created_ago=100, took=took)
    set_times(run(start("test.five_steps", fail="s2")), created_ago=100, took=10)
    set_times(
        run(start("test.five_steps", fail="s3", compensation_fails=["s1"])),
        created_ago=100,
        took=20,
    )
    set_times(run(start("test.five_steps")), created_ago=10_000, took=1)  # outside the range

    stats = saga_statistics(since=timezone.now() - timedelta(hours=1))

    assert stats["total"] == 6
    assert stats["by_status"]["COMPLETED"] == 4
    assert stats["success_rate"] == pytest.approx(4 / 6)
    assert stats["compensation_rate"] == pytest.approx(1 / 6)
    assert stats["top_failure_reasons"] == [
        ("compensation_exhausted", 1),
        ("test_business_error", 1),
    ]
    assert stats["durations"]["avg"] == pytest.approx(40 / 6)
    assert stats["durations"]["p50"] == pytest.approx(3.5)
    assert stats["dead_letters"] == 1


@pytest.mark.django_db
def test_health_turns_unhealthy_when_a_saga_is_stuck_and_recommends_what_to_do():
    saga = start("test.five_steps")
    assert saga_health().status == "HEALTHY"

    set_times(saga, created_ago=900, updated_ago=700)
    health = saga_health()

    assert (health.status, health.stuck, health.long_running, health.active) == (
        "UNHEALTHY",
        1,
        1,
        1,
    )
    assert "no progress for 10 minutes" in health.recommendations[0]
