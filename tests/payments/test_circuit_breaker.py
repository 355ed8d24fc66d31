"""The gateway's circuit breaker: fail fast while the gateway keeps failing, then recover."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from payments.circuit import gateway_breaker
from payments.exceptions import GatewayUnavailable
from payments.gateway import GatewayClient
from tests.gateway import GatewayProcess
from tests.workers import wait_for


@pytest.fixture
def breaker(settings):
    settings.PAYMENT_GATEWAY_BREAKER = {
        "WINDOW_SECONDS": 30,
        "MIN_CALLS": 4,
        "FAILURE_RATE": 0.5,
        "COOLDOWN_SECONDS": 1.0,
    }
    gateway_breaker.reset()
    yield gateway_breaker
    gateway_breaker.reset()


def charge(client: GatewayClient, key: str) -> None:
    client.charge(key=key, amount=Decimal("1.00"), currency="EUR", payment_method="pm_card_visa")


def test_a_gateway_that_keeps_failing_opens_the_circuit_and_calls_fail_fast(tmp_path, breaker):
    gateway = GatewayProcess(tmp_path)  # its port is chosen, nothing listens yet
    client = gateway.client(timeout=2)

    for i in range(4):
        with pytest.raises(GatewayUnavailable, match="cannot connect"):
            charge(client, f"k{i}")
    assert breaker.state().state == "open"
    with pytest.raises(GatewayUnavailable, match="circuit open"):
        charge(client, "fast")

    gateway.start()
    try:
        wait_for(lambda: breaker.state().state == "half_open", what="the cool-down to pass")
        charge(client, "trial")  # the trial call goes through and closes the circuit
        assert breaker.state().state == "closed"
        charge(client, "after")
        assert client.ledger()["charges"] == 2
    finally:
        gateway.stop()


def test_a_failed_trial_opens_the_circuit_again(tmp_path, breaker):
    client = GatewayProcess(tmp_path).client(timeout=2)
    for i in range(4):
        with pytest.raises(GatewayUnavailable):
            charge(client, f"k{i}")
    wait_for(lambda: breaker.state().state == "half_open", what="the cool-down to pass")

    with pytest.raises(GatewayUnavailable, match="cannot connect"):
        charge(client, "trial")

    assert breaker.state().state == "open"


def test_successes_keep_the_circuit_closed(tmp_path, breaker):
    gateway = GatewayProcess(tmp_path).start()
    try:
        client = gateway.client()
        for i in range(6):
            charge(client, f"ok{i}")
        assert breaker.state().state == "closed"
        assert breaker.state().calls == 6
    finally:
        gateway.stop()


def test_the_ledger_and_health_bypass_an_open_circuit(tmp_path, breaker):
    gateway = GatewayProcess(tmp_path).start()
    try:
        client = gateway.client()
        breaker._open(time.time())
        with pytest.raises(GatewayUnavailable, match="circuit open"):
            charge(client, "refused")
        assert client.health()
        assert client.ledger()["charges"] == 0
    finally:
        gateway.stop()
