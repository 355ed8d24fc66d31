from __future__ import annotations

from decimal import Decimal

import pytest

from inventory.exceptions import UnknownProduct
from inventory.models import Product
from orders.exceptions import (
    CreditLimitExceeded,
    CustomerInactive,
    CustomerNotFound,
    OrderStateError,
    PointsExceedOrderValue,
)
from orders.models import Order
from orders.services import (
    OrderItemIn,
    customer_validate,
    order_await_payment,
    order_cancel,
    order_mark_failed,
    order_mark_paid,
    order_place,
)
from tests.concurrency import run_concurrently
from tests.factories import make_customer, make_product


def place(customer, *items, key="req-1", points=0):
    return order_place(
        customer_id=customer.pk,
        items=[OrderItemIn(sku, qty) for sku, qty in items],
        payment_method="pm_card_visa",
        request_key=key,
        points_to_use=points,
    )


@pytest.mark.django_db
def test_order_place_snapshots_catalogue_prices_and_computes_totals(settings):
    settings.POINTS_VALUE = Decimal("0.01")
    customer = make_customer(points=500)
    keyboard = make_product(price="89.90")
    cable = make_product(price="9.90")

    order = place(customer, (keyboard.sku, 2), (cable.sku, 3), points=250)
    Product.objects.filter(pk=keyboard.pk).update(price=Decimal("1.00"))

    order.refresh_from_db()
    lines = {line.sku: line for line in order.lines.all()}
    assert lines[keyboard.sku].unit_price == Decimal("89.90")
    assert lines[keyboard.sku].line_total == Decimal("179.80")
    assert order.total == Decimal("209.50")
    assert order.points_value == Decimal("2.50")
    assert order.amount_due == Decimal("207.00")
    assert order.status == Order.Status.PLACED


@pytest.mark.django_db
def test_order_place_is_idempotent_on_request_key():
    customer = make_customer()
    product = make_product()

    first = place(customer, (product.sku, 1), key="same")
    second = place(customer, (product.sku, 5), key="same")

    assert first.pk == second.pk
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_placements_under_one_key_make_one_order():
    customer = make_customer()
    product = make_product()

    results = run_concurrently(lambda i: place(customer, (product.sku, 1), key="k"), threads=10)

    assert {r.pk for r in results} == {Order.objects.get().pk}


@pytest.mark.django_db
def test_order_place_refuses_unknown_sku_and_points_worth_more_than_the_order():
    customer = make_customer(points=10_000)
    product = make_product(price="5.00")

    with pytest.raises(UnknownProduct):
        place(customer, ("NOPE", 1))
    with pytest.raises(PointsExceedOrderValue):
        place(customer, (product.sku, 1), points=501)
    with pytest.raises(CustomerNotFound):
        order_place(
            customer_id=customer.pk + 99,
            items=[OrderItemIn(product.sku, 1)],
            payment_method="pm_card_visa",
            request_key="x",
        )
    assert not Order.objects.exists()


@pytest.mark.django_db
def test_customer_validate_raises_typed_business_errors():
    inactive = make_customer(active=False)
    limited = make_customer(credit_limit="100.00")

    with pytest.raises(CustomerInactive) as caught:
        customer_validate(customer_id=inactive.pk, amount=Decimal("1"))
    assert caught.value.code == "customer_inactive"
    with pytest.raises(CreditLimitExceeded) as caught:
        customer_validate(customer_id=limited.pk, amount=Decimal("100.01"))
    assert caught.value.code == "over_credit_limit"
    assert customer_validate(customer_id=limited.pk, amount=Decimal("100.00")) == limited


@pytest.mark.django_db
def test_order_transitions_are_idempotent_and_guarded():
    customer = make_customer()
    product = make_product()
    order = place(customer, (product.sku, 1))

    with pytest.raises(OrderStateError):
        order_mark_paid(order_id=order.pk)
    order_await_payment(order_id=order.pk)
    order_await_payment(order_id=order.pk)
    order_mark_paid(order_id=order.pk)
    assert order_mark_paid(order_id=order.pk).status == Order.Status.PAID
    with pytest.raises(OrderStateError):
        order_mark_failed(order_id=order.pk, reason="late")

    cancelled = order_cancel(order_id=order.pk, reason="customer asked")
    assert (cancelled.status, cancelled.status_reason) == ("CANCELLED", "customer asked")
    assert order_cancel(order_id=order.pk, reason="again").status_reason == "customer asked"
