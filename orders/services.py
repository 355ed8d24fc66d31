"""Writes to customers and orders.

Status changes are compare-and-set updates (``UPDATE ... WHERE status IN (...)``): two
callers racing on one order cannot both move it, and repeating a transition is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from inventory.exceptions import UnknownProduct
from inventory.selectors import ProductInfo, product_prices
from l2c.db import atomic, db_value, fetch_instances, no_savepoints, returning
from orders.exceptions import (
    CreditLimitExceeded,
    CustomerInactive,
    CustomerNotFound,
    OrderStateError,
    PointsExceedOrderValue,
)
from orders.models import Customer, Order, OrderLine
from points.selectors import points_value
from sagas.engine import saga_start
from sagas.models import SagaInstance

CENT = Decimal("0.01")


@dataclass(frozen=True)
class OrderItemIn:
    sku: str
    quantity: int


@transaction.atomic
def customer_create(
    *, name: str, email: str, credit_limit: Decimal = Decimal("0"), active: bool = True
) -> Customer:
    """Create a customer. Idempotent on ``email``: an existing customer is returned unchanged."""
    customer, _ = Customer.objects.get_or_create(
        email=email.lower(),
        defaults={"name": name, "credit_limit": credit_limit, "active": active},
    )
    return customer


def customer_validate(*, customer_id: int, amount: Decimal) -> Customer:
    """Check the customer may order ``amount``: active and within the credit limit."""
    customer = Customer.objects.filter(pk=customer_id).first()
    if customer is None:
        raise CustomerNotFound(customer_id=customer_id)
    if not customer.active:
        raise CustomerInactive(customer_id=customer_id)
    if amount > customer.credit_limit:
        raise CreditLimitExceeded(
            customer_id=customer_id,
            amount=str(amount),
            credit_limit=str(customer.credit_limit),
        )
    return customer


@atomic
def order_place(
    *,
    customer_id: int,
    items: Sequence[OrderItemIn],
    payment_method: str,
    request_key: str,
    points_to_use: int = 0,
    placed_by_id: int | None = None,
    catalogue: Mapping[str, ProductInfo] | None = None,
) -> Order:
    """Record an order with the catalogue's current prices snapshotted on its lines.

    Idempotent on ``request_key`` (unique): a replay returns the first order untouched.
    Prices and totals come from the catalogue; the caller never supplies them, but may pass
    the ``product_prices`` it has just read for these skus to save reading them again.
    """
    # Fast path for replays; the unique request_key below is what actually decides.
    existing = Order.objects.filter(request_key=request_key).first()
    if existing is not None:
        return existing
    if not Customer.objects.filter(pk=customer_id).exists():
        raise CustomerNotFound(customer_id=customer_id)
    skus = [item.sku for item in items]
    if not skus:
        raise ValueError("an order needs at least one line")
    if len(set(skus)) != len(skus):
        raise ValueError("an order lists each sku once")
    if catalogue is None:
        catalogue = product_prices(skus=skus)
    missing = sorted(set(skus) - set(catalogue))
    if missing:
        raise UnknownProduct(skus=missing)

    lines = [
        OrderLine(
            sku=item.sku,
            name=catalogue[item.sku].name,
            unit_price=catalogue[item.sku].price,
            quantity=item.quantity,
            line_total=(catalogue[item.sku].price * item.quantity).quantize(CENT),
        )
        for item in items
    ]
    total = sum((line.line_total for line in lines), Decimal("0"))
    value_of_points = points_value(points=points_to_use)
    if value_of_points > total:
        raise PointsExceedOrderValue(points=points_to_use, value=str(value_of_points))

    try:
        with transaction.atomic():
            order = Order.objects.create(
                customer_id=customer_id,
                placed_by_id=placed_by_id,
                request_key=request_key,
                total=total,
                points_used=points_to_use,
                points_value=value_of_points,
                amount_due=total - value_of_points,
                currency=settings.CURRENCY,
                payment_method=payment_method,
            )
    except IntegrityError:
        # A concurrent placement under the same key won the insert.
        return Order.objects.get(request_key=request_key)
    for line in lines:
        line.order = order
    OrderLine.objects.bulk_create(lines)
    # The lines just written, as order.lines.all() would read them back: the API answers
    # with them, and reading them again would cost a query per order placed.
    order._prefetched_objects_cache = {"lines": lines}
    return order


def _order_transition(
    *, order_id: int, to: str, allowed_from: Iterable[str], reason: str = ""
) -> Order:
    # Compare-and-set and read back in one statement (UPDATE ... RETURNING): the saga's
    # steps move every order twice.
    allowed = list(allowed_from)
    moved = fetch_instances(
        Order,
        f"UPDATE {Order._meta.db_table} SET status = %s, status_reason = %s,"
        f" updated_at = %s WHERE id = %s AND status IN ({', '.join(['%s'] * len(allowed))})"
        f" {returning(Order)}",
        [to, reason[:300], db_value(Order, "updated_at", timezone.now()), order_id, *allowed],
    )
    if moved:
        return moved[0]
    order = Order.objects.get(pk=order_id)
    if order.status != to:
        raise OrderStateError(order_id=order_id, status=order.status, wanted=to)
    return order


def order_await_payment(*, order_id: int) -> Order:
    """PLACED → AWAITING_PAYMENT; a no-op when already there."""
    return _order_transition(
        order_id=order_id, to=Order.Status.AWAITING_PAYMENT, allowed_from=[Order.Status.PLACED]
    )


def order_mark_paid(*, order_id: int) -> Order:
    """AWAITING_PAYMENT → PAID; a no-op when already paid."""
    return _order_transition(
        order_id=order_id, to=Order.Status.PAID, allowed_from=[Order.Status.AWAITING_PAYMENT]
    )


def order_cancel(*, order_id: int, reason: str) -> Order:
    """Cancel an order that is not yet failed, recording why; a no-op when already cancelled."""
    return _order_transition(
        order_id=order_id,
        to=Order.Status.CANCELLED,
        allowed_from=[Order.Status.PLACED, Order.Status.AWAITING_PAYMENT, Order.Status.PAID],
        reason=reason,
    )


def order_mark_failed(*, order_id: int, reason: str) -> Order:
    """An order that never got paid ends FAILED with the reason."""
    return _order_transition(
        order_id=order_id,
        to=Order.Status.FAILED,
        allowed_from=[Order.Status.PLACED, Order.Status.AWAITING_PAYMENT],
        reason=reason,
    )


def order_close_unpaid(*, order_id: int, reason: str) -> Order:
    """After a failed placement: an order that never got to awaiting payment ends FAILED
    with the reason; one already cancelled by the saga's compensation stays as it is."""
    moved = Order.objects.filter(pk=order_id, status=Order.Status.PLACED).update(
        status=Order.Status.FAILED, status_reason=reason[:300], updated_at=timezone.now()
    )
    order = Order.objects.get(pk=order_id)
    if not moved and order.status == Order.Status.AWAITING_PAYMENT:
        return order_cancel(order_id=order_id, reason=reason)
    return order


@atomic
def order_submit(
    *,
    customer_id: int,
    items: Sequence[OrderItemIn],
    payment_method: str,
    request_key: str,
    points_to_use: int = 0,
    placed_by_id: int | None = None,
    correlation_id: str = "",
    catalogue: Mapping[str, ProductInfo] | None = None,
) -> tuple[Order, SagaInstance]:
    """Record the order and start its placement saga in one transaction.

    Idempotent on ``request_key``: a replay returns the first order and its saga. The saga
    runs in a worker after commit; the order's status follows it. ``catalogue``: as for
    ``order_place``.
    """
    from orders.sagas import PLACE_ORDER

    # This block's own savepoint (or transaction) rolls back whatever fails in it.
    with no_savepoints():
        order = order_place(
            customer_id=customer_id,
            items=items,
            payment_method=payment_method,
            request_key=request_key,
            points_to_use=points_to_use,
            placed_by_id=placed_by_id,
            catalogue=catalogue,
        )
    saga = saga_start(
        PLACE_ORDER,
        data=order_saga_input(order=order, items=items),
        business_key=order.business_key,
        correlation_id=correlation_id,
        dedup_key=f"{order.business_key}:place",
    )
    return order, saga


def order_saga_input(*, order: Order, items: Sequence[OrderItemIn]) -> dict[str, Any]:
    """The placement saga's input: the order's facts, which never change once it is placed,
    so the steps need not read the order back one query each."""
    return {
        "order_id": order.pk,
        "customer_id": order.customer_id,
        "business_key": order.business_key,
        "items": [[item.sku, item.quantity] for item in items],
        "total": str(order.total),
        "points_used": order.points_used,
        "amount_due": str(order.amount_due),
        "payment_method": order.payment_method,
        "currency": order.currency,
    }


@transaction.atomic
def order_request_cancel(*, order_id: int, reason: str, correlation_id: str = "") -> SagaInstance:
    """Start the cancellation saga of a paid order. Idempotent: one cancellation per order.

    Raises ``OrderStateError`` for an order that is not paid (an unpaid order is cancelled
    by its own saga's compensation, not by this).
    """
    from orders.sagas import CANCEL_ORDER
    from payments.selectors import payments_for_order

    order = Order.objects.select_for_update().get(pk=order_id)
    if order.status not in (Order.Status.PAID, Order.Status.CANCELLED):
        raise OrderStateError(order_id=order_id, status=order.status, wanted="CANCELLED")
    place = (
        SagaInstance.objects.filter(
            business_key=order.business_key, definition="orders.place_order"
        )
        .order_by("created_at")
        .first()
    )
    payment = payments_for_order(order_ref=order.business_key).first()
    place_id = str(place.pk) if place else ""
    return saga_start(
        CANCEL_ORDER,
        data={
            "order_id": order.pk,
            "reason": reason,
            "charge_key": payment.key if payment else f"{place_id}:process_payment",
            "points_key": f"{place_id}:deduct_points",
            "reservation_key": f"{place_id}:reserve_stock",
        },
        business_key=order.business_key,
        correlation_id=correlation_id,
        dedup_key=f"{order.business_key}:cancel",
    )
