from __future__ import annotations

import pytest

from tests.workers import QCluster


@pytest.fixture
def qcluster(transactional_db, tmp_path):
    """A real qcluster against the test database, with short leases so a dead worker's saga
    can be recovered within the test."""
    cluster = QCluster(
        tmp_path,
        SAGA_LEASE_SECONDS="2",
        SAGA_LEASE_MARGIN_SECONDS="1",
        Q_WORKERS="2",
    )
    yield cluster
    cluster.kill()
