"""The Redis broker of the task queue: waiting tasks come out in batches, in order."""

from __future__ import annotations

import uuid

import pytest
from django_q.brokers import get_broker
from django_q.conf import Conf
from redis.exceptions import ResponseError

from l2c.broker import RedisBroker


@pytest.fixture
def broker(settings, monkeypatch):
    if not settings.REDIS_URL:
        pytest.skip("the batch pop is Redis's")
    monkeypatch.setattr(Conf, "BULK", 3)
    broker = get_broker(f"test-{uuid.uuid4().hex}")
    yield broker
    broker.delete_queue()


def test_the_project_uses_it(broker):
    assert isinstance(broker, RedisBroker)


def test_waiting_tasks_come_out_in_batches_in_the_order_they_went_in(broker):
    for n in range(7):
        broker.enqueue(f"task {n}".encode())

    batches = [[task for _, task in broker.dequeue()] for _ in range(3)]

    assert batches == [
        [b"task 0", b"task 1", b"task 2"],
        [b"task 3", b"task 4", b"task 5"],
        [b"task 6"],
    ]
    assert broker.queue_size() == 0


def test_a_redis_without_blmpop_gets_one_task_at_a_time(broker, monkeypatch):
    def unknown(*args, **kwargs):
        raise ResponseError("unknown command 'BLMPOP'")

    monkeypatch.setattr(broker.connection, "blmpop", unknown)
    broker.enqueue(b"first")
    broker.enqueue(b"second")

    assert [task for _, task in broker.dequeue()] == [b"first"]
    assert [task for _, task in broker.dequeue()] == [b"second"]
