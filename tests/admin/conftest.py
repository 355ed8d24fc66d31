from __future__ import annotations

import pytest

from tests.sagas.helpers import make_counters


@pytest.fixture(autouse=True)
def counters(db):
    make_counters("s1", "s2", "s3", "s4", "s5", "d1", "d2", "d3", "p1", "p2", "p3")


@pytest.fixture(autouse=True)
def enqueued(monkeypatch):
    """Sagas handed to a worker after an intervention, recorded instead of sent."""
    sent: list[str] = []
    monkeypatch.setattr(
        "sagas.services.enqueue_run", lambda saga_id, priority=1: sent.append(str(saga_id))
    )
    return sent
