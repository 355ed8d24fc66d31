from __future__ import annotations

import pytest

from tests.workers import QCluster


@pytest.fixture
def qcluster(transactional_db, tmp_path):
    """A real qcluster against the test database, with short leases so a dead worker's saga
    can be recovered within the test, and a short outbox claim so a message a killed relay
    had claimed is published again within it."""
    cluster = QCluster(
        tmp_path,
        SAGA_LEASE_SECONDS="2",
        SAGA_LEASE_MARGIN_SECONDS="1",
        SAGA_RECOVERY_INTERVAL_SECONDS="1",
        SAGA_STALE_AFTER_SECONDS="3",
        SAGA_TIMEOUT_CHECK_INTERVAL_SECONDS="1",
        OUTBOX_CLAIM_SECONDS="5",
        PAYMENT_GATEWAY_TIMEOUT="3",
        Q_WORKERS="2",
    )
    yield cluster
    cluster.kill()


@pytest.fixture
def gateway(tmp_path, settings):
    """The gateway simulator as its own process; this process and the workers use it."""
    from tests.gateway import API_KEY, GatewayProcess

    process = GatewayProcess(tmp_path, slow_seconds=5).start()
    settings.PAYMENT_GATEWAY_URL = process.url
    settings.PAYMENT_GATEWAY_API_KEY = API_KEY
    settings.PAYMENT_GATEWAY_TIMEOUT = 3.0
    yield process
    process.stop()


@pytest.fixture
def qcluster_with_gateway(qcluster, gateway):
    from tests.gateway import API_KEY

    qcluster.env.update(PAYMENT_GATEWAY_URL=gateway.url, PAYMENT_GATEWAY_API_KEY=API_KEY)
    return qcluster
