"""The payment gateway simulator, its client and the payment services, over real HTTP.

The simulator runs as a separate process (``manage.py gateway_simulator``) with its own
SQLite ledger, as the real gateway would: its books are checked through ``/v1/ledger``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from payments.exceptions import (
    CardDeclined,
    GatewayTimeout,
    GatewayUnavailable,
    PaymentRejected,
)
from payments.gateway import Charge, GatewayClient, RefundResult, gateway_client
from payments.models import Payment, Refund
from payments.selectors import payment_get, payments_for_order
from payments.services import payment_charge, payment_refund, payment_resolve
from payments.simulator import start_in_thread
from tests.concurrency import run_concurrently
from tests.gateway import API_KEY, GatewayProcess, free_port


@pytest.fixture
def gateway(tmp_path: Path, settings: Any) -> Iterator[str]:
    """A simulator process on a free port with a fresh ledger; the settings point at it."""
    process = GatewayProcess(tmp_path).start()
    settings.PAYMENT_GATEWAY_URL = process.url
    settings.PAYMENT_GATEWAY_API_KEY = API_KEY
    settings.PAYMENT_GATEWAY_TIMEOUT = 10.0
    try:
        yield process.url
    finally:
        process.stop()


def _ledger() -> dict[str, Any]:
    return gateway_client().ledger()


def _raw_post(
    url: str, path: str, body: object, *, key: str | None = None, token: str | None = API_KEY
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _charge(key: str, amount: str = "25.00", method: str = "pm_card_visa") -> Charge:
    return gateway_client().charge(
        key=key, amount=Decimal(amount), currency="EUR", payment_method=method, reference="t"
    )


# --- the simulator and its client -----------------------------------------------------------


def test_same_key_charges_once(gateway: str) -> None:
    first = _charge("charge:1")
    again = _charge("charge:1")

    assert first == again
    assert first.status == "succeeded"
    assert first.amount == Decimal("25.00")
    ledger = _ledger()
    assert ledger["charges"] == 1
    assert ledger["charged"] == "25.00"
    assert ledger["by_key"] == {"charge:1": {"charged": "25.00", "refunded": "0.00"}}


def test_same_key_from_concurrent_threads_charges_once(gateway: str) -> None:
    results = run_concurrently(lambda i: _charge("charge:race", amount="9.99"), threads=10)

    assert all(isinstance(result, Charge) for result in results), results
    assert len({result.id for result in results}) == 1
    ledger = _ledger()
    assert ledger["charges"] == 1
    assert ledger["charged"] == "9.99"


def test_same_key_with_another_amount_is_rejected(gateway: str) -> None:
    _charge("charge:reuse", amount="10.00")

    with pytest.raises(PaymentRejected) as caught:
        _charge("charge:reuse", amount="11.00")

    assert caught.value.extra["status"] == 409
    assert _ledger()["charged"] == "10.00"


def test_declined_card_raises_and_moves_no_money(gateway: str) -> None:
    for _ in range(2):  # the decline is stored: a replay declines too
        with pytest.raises(CardDeclined) as caught:
            _charge("charge:declined", method="pm_card_chargeDeclined")
        assert caught.value.code == "card_declined"
        assert caught.value.extra["decline_code"]

    ledger = _ledger()
    assert ledger["charges"] == 0
    assert ledger["charged"] == "0.00"
    assert gateway_client().charge_status(key="charge:declined").status == "declined"


def test_flaky_card_is_unavailable_twice_then_charges_once(gateway: str) -> None:
    for _ in range(2):
        with pytest.raises(GatewayUnavailable):
            _charge("charge:flaky", method="pm_card_flaky")
        assert gateway_client().charge_status(key="charge:flaky") is None

    charge = _charge("charge:flaky", method="pm_card_flaky")
    assert _charge("charge:flaky", method="pm_card_flaky") == charge

    assert charge.status == "succeeded"
    assert _ledger()["charges"] == 1


def test_slow_card_times_out_but_the_status_query_finds_the_charge(
    gateway: str, settings: Any
) -> None:
    settings.PAYMENT_GATEWAY_TIMEOUT = 1.0

    with pytest.raises(GatewayTimeout):
        _charge("charge:slow", method="pm_card_slow")

    found = gateway_client().charge_status(key="charge:slow")
    assert found is not None
    assert found.status == "succeeded"
    assert found.amount == Decimal("25.00")
    assert _ledger()["charges"] == 1


def test_status_query_finds_the_charge_under_a_key_and_none_for_an_unknown_key(
    gateway: str,
) -> None:
    made = _charge("order:7/payment")  # a "/" in the key survives the URL

    assert gateway_client().charge_status(key="order:7/payment") == made
    assert gateway_client().charge_status(key="never-used") is None


def test_refund_with_the_same_key_refunds_once_and_never_exceeds_the_charge(
    gateway: str,
) -> None:
    client = gateway_client()
    charge = _charge("charge:refund", amount="30.00")

    partial = client.refund(key="refund:1", charge_id=charge.id, amount=Decimal("10.00"))
    assert client.refund(key="refund:1", charge_id=charge.id, amount=Decimal("10.00")) == partial
    assert isinstance(partial, RefundResult)
    with pytest.raises(PaymentRejected):
        client.refund(key="refund:2", charge_id=charge.id, amount=Decimal("20.01"))
    rest = client.refund(key="refund:3", charge_id=charge.id)  # what is left
    assert rest.amount == Decimal("20.00")
    with pytest.raises(PaymentRejected):
        client.refund(key="refund:4", charge_id=charge.id, amount=Decimal("0.01"))
    with pytest.raises(PaymentRejected):
        client.refund(key="refund:5", charge_id="ch_unknown")

    ledger = _ledger()
    assert ledger["refunds"] == 2
    assert ledger["refunded"] == "30.00"
    assert ledger["by_key"]["charge:refund"] == {"charged": "30.00", "refunded": "30.00"}
    assert client.charge_status(key="charge:refund").refunded == Decimal("30.00")


@pytest.mark.parametrize(
    ("key", "body"),
    [
        (None, {"amount": "10.00", "currency": "EUR", "payment_method": "pm_card_visa"}),
        ("bad:1", {"amount": "1.001", "currency": "EUR", "payment_method": "pm_card_visa"}),
        ("bad:2", {"amount": "-5", "currency": "EUR", "payment_method": "pm_card_visa"}),
        ("bad:3", {"amount": "abc", "currency": "EUR", "payment_method": "pm_card_visa"}),
        ("bad:4", {"amount": "0", "currency": "EUR", "payment_method": "pm_card_visa"}),
        ("bad:5", {"amount": 12.5, "currency": "EUR", "payment_method": "pm_card_visa"}),
        ("bad:6", {"amount": "1e3", "currency": "EUR", "payment_method": "pm_card_visa"}),
        ("bad:7", {"amount": "10.00", "currency": "EUR", "payment_method": "pm_bitcoin"}),
        ("bad:8", {"amount": "10.00", "currency": "EURO", "payment_method": "pm_card_visa"}),
        ("bad:9", {"amount": "10.00", "currency": "EUR", "payment_method": ["pm_card_visa"]}),
        ("bad:10", ["not", "an", "object"]),
    ],
)
def test_bad_charge_requests_are_refused_without_charging(
    gateway: str, key: str | None, body: object
) -> None:
    status, answer = _raw_post(gateway, "/v1/charges", body, key=key)

    assert status == 400, answer
    assert answer["error"]["code"]
    assert _ledger()["charges"] == 0


def test_a_request_without_the_api_key_is_refused(gateway: str) -> None:
    body = {"amount": "10.00", "currency": "EUR", "payment_method": "pm_card_visa"}

    assert _raw_post(gateway, "/v1/charges", body, key="k", token=None)[0] == 401
    assert _raw_post(gateway, "/v1/charges", body, key="k", token="sk_wrong")[0] == 401
    assert _ledger()["charges"] == 0


def test_in_process_simulator_on_port_zero(tmp_path: Path) -> None:
    server, thread = start_in_thread("127.0.0.1", 0, tmp_path / "gw.sqlite3", 0)
    try:
        assert server.server_port != 0
        client = GatewayClient(base_url=server.url, api_key="any", timeout=5)
        assert client.health()
        assert client.charge(
            key="k", amount=Decimal("1.00"), currency="EUR", payment_method="pm_card_visa"
        ).succeeded
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_an_unreachable_gateway_is_unavailable() -> None:
    client = GatewayClient(base_url=f"http://127.0.0.1:{free_port()}", api_key=API_KEY, timeout=5)

    assert not client.health()
    with pytest.raises(GatewayUnavailable):
        client.charge(
            key="k", amount=Decimal("1.00"), currency="EUR", payment_method="pm_card_visa"
        )


# --- the payment services -------------------------------------------------------------------


@pytest.mark.django_db
def test_payment_charge_twice_records_one_payment(gateway: str) -> None:
    first = payment_charge(
        key="saga:1:charge", order_ref="order:1", amount=Decimal("42.50"), method="pm_card_visa"
    )
    again = payment_charge(
        key="saga:1:charge", order_ref="order:1", amount=Decimal("42.50"), method="pm_card_visa"
    )

    assert again.pk == first.pk
    assert Payment.objects.count() == 1
    assert first.status == Payment.Status.SUCCEEDED
    assert first.gateway_charge_id.startswith("ch_")
    assert first.currency == "EUR"
    assert payment_get(key="saga:1:charge") == first
    assert list(payments_for_order(order_ref="order:1")) == [first]
    assert _ledger()["charges"] == 1


@pytest.mark.django_db
def test_payment_charge_declined_records_nothing(gateway: str) -> None:
    with pytest.raises(CardDeclined):
        payment_charge(
            key="saga:2:charge",
            order_ref="order:2",
            amount=Decimal("5.00"),
            method="pm_card_chargeDeclined",
        )

    assert not Payment.objects.exists()
    assert payment_resolve(key="saga:2:charge") is None


@pytest.mark.django_db
def test_payment_charge_after_a_timeout_is_resolved_by_the_status_query(
    gateway: str, settings: Any
) -> None:
    settings.PAYMENT_GATEWAY_TIMEOUT = 1.0
    with pytest.raises(GatewayTimeout):
        payment_charge(
            key="saga:3:charge", order_ref="order:3", amount=Decimal("7.00"), method="pm_card_slow"
        )
    assert not Payment.objects.exists()

    payment = payment_resolve(key="saga:3:charge")

    assert payment is not None
    assert payment.order_ref == "order:3"
    assert payment.amount == Decimal("7.00")
    assert payment_resolve(key="saga:3:charge") == payment
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_zero_amount_payment_never_calls_the_gateway(
    gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_gateway(*args: object, **kwargs: object) -> None:
        raise AssertionError("the gateway was called")

    monkeypatch.setattr(GatewayClient, "charge", no_gateway)
    monkeypatch.setattr(GatewayClient, "refund", no_gateway)

    payment = payment_charge(
        key="saga:4:charge", order_ref="order:4", amount=Decimal("0"), method="points"
    )
    assert payment.status == Payment.Status.SUCCEEDED
    assert payment.gateway_charge_id == ""

    assert payment_refund(key="saga:4:refund", charge_key="saga:4:charge") is None
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert _ledger()["charges"] == 0


@pytest.mark.django_db
def test_refund_of_a_charge_that_never_happened_is_empty(
    gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, object]] = []

    def spy(self: GatewayClient, **kwargs: object) -> None:
        calls.append(kwargs)
        raise AssertionError("refund was called")

    monkeypatch.setattr(GatewayClient, "refund", spy)

    assert payment_refund(key="saga:5:refund", charge_key="saga:5:charge") is None
    assert calls == []
    assert not Payment.objects.exists()
    assert not Refund.objects.exists()


@pytest.mark.django_db
def test_refund_finds_a_charge_we_never_recorded_and_refunds_it_once(gateway: str) -> None:
    # The charge went through but the step died before recording it.
    gateway_client().charge(
        key="saga:6:charge",
        amount=Decimal("19.90"),
        currency="EUR",
        payment_method="pm_card_visa",
        reference="order:6",
    )
    assert not Payment.objects.exists()

    refund = payment_refund(key="saga:6:refund", charge_key="saga:6:charge", reason="cancelled")
    again = payment_refund(key="saga:6:refund", charge_key="saga:6:charge", reason="cancelled")

    assert refund is not None
    assert again == refund
    assert refund.amount == Decimal("19.90")
    assert refund.gateway_refund_id.startswith("re_")
    payment = Payment.objects.get(key="saga:6:charge")
    assert payment.order_ref == "order:6"
    assert payment.status == Payment.Status.REFUNDED
    assert Refund.objects.count() == 1
    ledger = _ledger()
    assert ledger["refunds"] == 1
    assert ledger["by_key"]["saga:6:charge"] == {"charged": "19.90", "refunded": "19.90"}


@pytest.mark.django_db
def test_refund_after_a_crash_between_gateway_and_record_replays(gateway: str) -> None:
    payment = payment_charge(
        key="saga:7:charge", order_ref="order:7", amount=Decimal("12.00"), method="pm_card_visa"
    )
    # The refund reached the gateway but its row was never written.
    gateway_client().refund(key="saga:7:refund", charge_id=payment.gateway_charge_id)

    refund = payment_refund(key="saga:7:refund", charge_key="saga:7:charge")

    assert refund is not None
    assert refund.amount == Decimal("12.00")
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert _ledger()["refunds"] == 1
