from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from l2c import faults as testing
from sagas.outbox import Handler, consumer, consumer_remove
from tests.outbox.helpers import Receiver
from tests.workers import QCluster


@pytest.fixture(autouse=True)
def enqueued(request, monkeypatch) -> list[str]:
    """The tasks the prompt relay enqueued, recorded instead of pushed to the broker.

    A test with the ``qcluster`` fixture keeps the real broker: its worker runs them.
    """
    calls: list[str] = []
    if "qcluster" not in request.fixturenames:

        def async_task(func: str, *args: object, **kwargs: object) -> str:
            calls.append(func)
            return f"task-{len(calls)}"

        monkeypatch.setattr("django_q.tasks.async_task", async_task)
    return calls


@pytest.fixture
def register() -> Iterator[Callable[[str, str, Handler], None]]:
    """Register a consumer for the length of one test."""
    added: list[tuple[str, str]] = []

    def add(topic: str, name: str, fn: Handler) -> None:
        consumer(topic, name)(fn)
        added.append((topic, name))

    yield add
    for topic, name in added:
        consumer_remove(topic=topic, name=name)


@pytest.fixture
def faults(monkeypatch) -> Iterator[Callable[[dict[str, str] | None], None]]:
    """``l2c.faults.set_faults``, with the process's fault setup restored afterwards."""
    monkeypatch.setattr(testing, "_faults", testing._faults)
    yield testing.set_faults
    testing.set_faults({})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def qcluster(transactional_db, tmp_path) -> Iterator[QCluster]:
    cluster = QCluster(tmp_path, Q_WORKERS="1")
    yield cluster
    cluster.kill()
