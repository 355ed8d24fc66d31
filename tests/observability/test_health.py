"""/api/health/: liveness, and readiness from the database, Redis, the workers and sagas."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from l2c import health
from payments.circuit import gateway_breaker
from sagas.engine import saga_start
from sagas.models import SagaInstance
from tests.workers import QCluster, wait_for

URL = "/api/health/"


def ready(client: Client) -> tuple[int, dict[str, Any]]:
    response = client.get(URL)
    return response.status_code, response.json()


def make_stuck_saga() -> SagaInstance:
    """A saga held by a hung worker (its lease is far from expiring, so recovery leaves it
    alone) that made no progress for 11 minutes."""
    saga = saga_start("test.five_steps", data={}, enqueue=False)
    now = timezone.now()
    SagaInstance.objects.filter(pk=saga.pk).update(
        status=SagaInstance.Status.EXECUTING,
        lease_owner="hung-worker",
        lease_expires_at=now + timedelta(hours=1),
        created_at=now - timedelta(minutes=11),
        updated_at=now - timedelta(minutes=11),
    )
    return saga


@pytest.fixture
def workers_up(monkeypatch):
    """Readiness without a qcluster: for the tests about the other checks."""
    monkeypatch.setitem(health.CHECKS, "workers", (lambda: {"ok": True}, True))


def test_liveness_answers_ok_even_when_the_database_is_down(monkeypatch):
    def down() -> dict[str, Any]:
        raise OperationalError("connection refused")

    monkeypatch.setitem(health.CHECKS, "database", (down, True))
    client = Client()
    live = client.get(URL, {"probe": "live"})
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert "no-store" in live["Cache-Control"]

    status, body = ready(client)
    assert status == 503
    assert body["checks"]["database"]["ok"] is False
    assert "connection refused" in body["checks"]["database"]["error"]


@pytest.mark.django_db
def test_readiness_lists_every_check_and_is_never_cached(workers_up):
    response = Client().get(URL)
    assert response.status_code == 200, response.json()
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "redis", "workers", "sagas", "payment_gateway"}
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is True
    assert body["checks"]["sagas"]["status"] == "HEALTHY"
    assert body["checks"]["payment_gateway"]["state"] == "closed"


@pytest.mark.django_db
def test_a_stuck_saga_makes_readiness_fail_until_it_moves(workers_up):
    client = Client()
    saga = make_stuck_saga()

    status, body = ready(client)
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["sagas"]["ok"] is False
    assert body["checks"]["sagas"]["status"] == "UNHEALTHY"
    assert body["checks"]["sagas"]["stuck"] == 1
    assert body["checks"]["sagas"]["recommendations"]

    SagaInstance.objects.filter(pk=saga.pk).update(updated_at=timezone.now())
    status, body = ready(client)
    assert status == 200, body
    assert body["checks"]["sagas"]["status"] == "HEALTHY"


@pytest.mark.django_db
def test_an_open_gateway_circuit_is_reported_but_does_not_fail_readiness(workers_up):
    for _ in range(30):
        gateway_breaker.record(ok=False)
    try:
        status, body = ready(Client())
    finally:
        gateway_breaker.reset()
    assert status == 200
    assert body["checks"]["payment_gateway"]["state"] == "open"
    assert body["checks"]["payment_gateway"]["ok"] is False
    assert body["checks"]["payment_gateway"]["critical"] is False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_readiness_follows_the_qcluster_and_the_sagas(tmp_path):
    client = Client()

    def workers_state(expected_status: int) -> dict[str, Any] | None:
        status, body = ready(client)
        return body if status == expected_status else None

    # No cluster: the workers check fails.
    status, body = ready(client)
    assert status == 503
    assert body["checks"]["workers"]["ok"] is False
    assert body["checks"]["workers"]["clusters"] == []
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]

    cluster = QCluster(tmp_path, Q_WORKERS="1").start()
    try:
        body = wait_for(
            lambda: workers_state(200),
            timeout=90,
            what=lambda: f"readiness with a cluster up: {ready(client)}\n{cluster.log_tail()}",
        )
        assert body["checks"]["workers"]["clusters"][0]["workers"] >= 1

        # Workers up, but a saga is stuck: UNHEALTHY.
        saga = make_stuck_saga()
        status, body = ready(client)
        assert status == 503
        assert body["checks"]["workers"]["ok"] is True
        assert body["checks"]["sagas"]["stuck"] == 1

        # It moves again: ready.
        SagaInstance.objects.filter(pk=saga.pk).update(
            status=SagaInstance.Status.COMPLETED, completed_at=timezone.now()
        )
        status, body = ready(client)
        assert status == 200, body
    finally:
        cluster.kill()

    # The cluster's status expires a few seconds after it died.
    body = wait_for(lambda: workers_state(503), timeout=30, what="readiness to notice")
    assert body["checks"]["workers"]["ok"] is False
