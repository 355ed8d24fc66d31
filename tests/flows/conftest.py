from __future__ import annotations

import pytest

from tests.gateway import API_KEY, GatewayProcess


@pytest.fixture
def gateway(tmp_path, settings):
    """The gateway simulator as its own process; the settings of this process point at it."""
    process = GatewayProcess(tmp_path, slow_seconds=3).start()
    settings.PAYMENT_GATEWAY_URL = process.url
    settings.PAYMENT_GATEWAY_API_KEY = API_KEY
    settings.PAYMENT_GATEWAY_TIMEOUT = 10.0
    yield process
    process.stop()
