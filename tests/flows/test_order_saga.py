"""The order sagas run in this process against the gateway simulator process."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from inventory.models import Stock
from orders.models import Order
from orders.services import OrderItemIn, order_request_cancel, order_submit
from payments.models import Payment
from points.selectors import points_balance
from sagas.engine import saga_run
from sagas.models import SagaInstance, SagaStep
from sagas.outbox import outbox_relay
from tests.factories import make_customer, make_product
from tests.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def run_to_end(saga: SagaInstance) -> SagaInstance:
    """Run the saga in this process, waiting out its delayed retries, until it ends."""

    def finished() -> bool:
        saga.refresh_from_db()
        if saga.status in SagaInstance.TERMINAL:
            return True
        if saga.wake_at is None or saga.wake_at <= timezone.now():
            saga_run(saga.pk)
        return False

    wait_for(finished, timeout=60, what="the saga to end")
    return saga


def submit(customer, *items, method="pm_card_visa", points=0, key="k1"):
    return order_submit(
        customer_id=customer.pk,
        items=[OrderItemIn(sku, qty) for sku, qty in items],
        payment_method=method,
        request_key=key,
        points_to_use=points,
    )


def stock(product) -> tuple[int, int]:
    row = Stock.objects.get(product=product)
    return row.on_hand, row.reserved


def test_a_good_order_ends_paid_with_stock_sold_points_taken_and_one_charge(gateway, settings):
    settings.POINTS_VALUE = Decimal("0.01")
    product = make_product(price="40.00", on_hand=10)
    customer = make_customer(points=500)

    order, saga = submit(customer, (product.sku, 2), points=300)
    saga = run_to_end(saga)

    order.refresh_from_db()
    assert (saga.status, order.status) == ("COMPLETED", "PAID")
    assert order.amount_due == Decimal("77.00")
    assert stock(product) == (8, 0)
    assert points_balance(customer_id=customer.pk) == 200
    ledger = gateway.client().ledger()
    assert (ledger["charges"], Decimal(ledger["charged"])) == (1, Decimal("77.00"))
    outbox_relay()
    assert [m.to for m in mail.outbox] == [[customer.email]]


def test_a_declined_card_cancels_the_order_and_moves_no_money(gateway):
    product = make_product(price="10.00", on_hand=5)
    customer = make_customer(points=100)

    order, saga = submit(customer, (product.sku, 1), method="pm_card_chargeDeclined", points=50)
    saga = run_to_end(saga)

    order.refresh_from_db()
    assert (saga.status, order.status) == ("COMPENSATED", "CANCELLED")
    assert order.status_reason.startswith("card_declined")
    assert stock(product) == (5, 0)
    assert points_balance(customer_id=customer.pk) == 100
    assert Decimal(gateway.client().ledger()["charged"]) == 0
    payment_step = SagaStep.objects.get(saga=saga, name="process_payment")
    assert payment_step.attempts == 1  # a decline is final: never retried


@pytest.mark.parametrize(
    ("case", "status"),
    [("insufficient_stock", "FAILED"), ("not_enough_points", "CANCELLED")],
)
def test_business_failures_before_payment_never_touch_the_gateway(gateway, case, status):
    product = make_product(price="10.00", on_hand=1 if case == "insufficient_stock" else 5)
    customer = make_customer(points=10)

    order, saga = submit(
        customer,
        (product.sku, 2 if case == "insufficient_stock" else 1),
        points=500 if case == "not_enough_points" else 0,
    )
    saga = run_to_end(saga)

    order.refresh_from_db()
    assert (saga.status, saga.error_code, order.status) == ("COMPENSATED", case, status)
    assert stock(product)[1] == 0
    assert points_balance(customer_id=customer.pk) == 10
    assert gateway.client().ledger()["charges"] == 0


def test_an_inactive_customer_fails_the_order_at_validation(gateway):
    product = make_product(on_hand=5)
    customer = make_customer(active=False)

    order, saga = submit(customer, (product.sku, 1))
    saga = run_to_end(saga)

    order.refresh_from_db()
    assert (saga.error_code, order.status) == ("customer_inactive", "FAILED")
    assert stock(product) == (5, 0)


def test_a_flaky_gateway_is_retried_to_one_charge(gateway):
    product = make_product(price="12.50", on_hand=5)
    customer = make_customer()

    order, saga = submit(customer, (product.sku, 2), method="pm_card_flaky")
    saga = run_to_end(saga)

    order.refresh_from_db()
    assert (saga.status, order.status) == ("COMPLETED", "PAID")
    assert SagaStep.objects.get(saga=saga, name="process_payment").attempts == 3
    assert gateway.client().ledger()["charges"] == 1


def test_cancelling_a_paid_order_refunds_once_returns_points_and_restocks(gateway, settings):
    settings.POINTS_VALUE = Decimal("0.01")
    product = make_product(price="20.00", on_hand=4)
    customer = make_customer(points=1000)
    order, saga = submit(customer, (product.sku, 3), points=1000)
    run_to_end(saga)

    cancel = order_request_cancel(order_id=order.pk, reason="customer changed mind")
    again = order_request_cancel(order_id=order.pk, reason="double click")
    cancel = run_to_end(cancel)

    order.refresh_from_db()
    assert again.pk == cancel.pk
    assert (cancel.status, order.status) == ("COMPLETED", "CANCELLED")
    assert order.status_reason == "customer changed mind"
    assert stock(product) == (4, 0)
    assert points_balance(customer_id=customer.pk) == 1000
    ledger = gateway.client().ledger()
    assert (ledger["charges"], ledger["refunds"]) == (1, 1)
    assert Decimal(ledger["charged"]) == Decimal(ledger["refunded"]) == Decimal("50.00")
    assert Payment.objects.get().status == Payment.Status.REFUNDED
    assert Order.objects.count() == 1


def test_a_placement_saga_started_with_the_order_id_alone_reads_the_order(gateway):
    from orders.sagas import PLACE_ORDER
    from orders.services import order_place
    from sagas.engine import saga_start

    product = make_product(price="12.50", on_hand=5)
    customer = make_customer(points=0)
    order = order_place(
        customer_id=customer.pk,
        items=[OrderItemIn(product.sku, 2)],
        payment_method="pm_card_visa",
        request_key="id-only",
    )
    saga = saga_start(PLACE_ORDER, data={"order_id": order.pk}, business_key=order.business_key)

    saga = run_to_end(saga)

    order.refresh_from_db()
    assert (saga.status, order.status) == (SagaInstance.Status.COMPLETED, Order.Status.PAID)
    assert stock(product) == (3, 0)
    assert Payment.objects.get(order_ref=order.business_key).amount == Decimal("25.00")
