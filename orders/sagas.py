"""The order sagas: the only place where the domains are wired together.

``orders.place_order`` (ARCHITECTURE §5): validate the customer, reserve stock, move the
order to awaiting payment, deduct points, charge the rest (the pivot), confirm the stock,
mark the order paid, notify. Everything before the payment is undone when a later step
before the payment fails; everything after it is retried forward.

``orders.cancel_order``: for a paid order, refund, return the points, put the stock back,
cancel the order and notify. Its refund is the pivot: once money went back, the rest only
goes forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from inventory.selectors import reservation_get
from inventory.services import ItemIn, stock_confirm, stock_release, stock_reserve, stock_restock
from orders.models import Customer, Order
from orders.notifications import ORDER_PAID
from orders.services import (
    OrderItemIn,
    customer_validate,
    order_await_payment,
    order_cancel,
    order_close_unpaid,
    order_mark_paid,
    order_saga_input,
)
from payments.services import payment_charge, payment_refund, payment_resolve
from points.services import points_deduct, points_return
from sagas import Retry, Saga, Step, StepContext, register
from sagas.outbox import outbox_put

ORDER_CANCELLED = "order.cancelled"


def _order(ctx: StepContext) -> Order:
    return Order.objects.select_related("customer").get(pk=ctx.data["order_id"])


@dataclass(frozen=True)
class _Facts:
    """What the placement steps need to know of the order (fixed once it is placed)."""

    order_id: int
    customer_id: int
    business_key: str
    items: list[ItemIn]
    total: Decimal
    points_used: int
    amount_due: Decimal
    payment_method: str
    currency: str


def _facts(ctx: StepContext) -> _Facts:
    """From the saga's input (``order_submit`` puts them there); a saga started with the
    order id alone reads them from the order."""
    data = ctx.data
    if "items" not in data:
        order = _order(ctx)
        items = [OrderItemIn(line.sku, line.quantity) for line in order.lines.all()]
        data = order_saga_input(order=order, items=items)
    return _Facts(
        order_id=data["order_id"],
        customer_id=data["customer_id"],
        business_key=data["business_key"],
        items=[ItemIn(sku, quantity) for sku, quantity in data["items"]],
        total=Decimal(data["total"]),
        points_used=data["points_used"],
        amount_due=Decimal(data["amount_due"]),
        payment_method=data["payment_method"],
        currency=data["currency"],
    )


def _reason(ctx: StepContext) -> str:
    code = ctx.extra.get("error_code") or "saga_compensated"
    message = ctx.extra.get("error_message") or ""
    return f"{code}: {message}"[:300] if message else code


# --- orders.place_order -------------------------------------------------------------------


def validate_customer(ctx: StepContext) -> dict[str, Any]:
    facts = _facts(ctx)
    customer_validate(customer_id=facts.customer_id, amount=facts.total)
    return {"customer_id": facts.customer_id}


def reserve_stock(ctx: StepContext) -> dict[str, Any]:
    reservation = stock_reserve(key=ctx.key, items=_facts(ctx).items)
    return {"reservation": reservation.key}


def release_stock(ctx: StepContext) -> None:
    stock_release(key=ctx.key, reason="order saga compensated")


def create_order(ctx: StepContext) -> dict[str, Any]:
    order = order_await_payment(order_id=ctx.data["order_id"])
    return {"status": order.status}


def cancel_created_order(ctx: StepContext) -> None:
    order_cancel(order_id=ctx.data["order_id"], reason=_reason(ctx))


def deduct_points(ctx: StepContext) -> dict[str, Any]:
    facts = _facts(ctx)
    entry = points_deduct(
        key=ctx.key,
        customer_id=facts.customer_id,
        amount=facts.points_used,
        reason=f"order {facts.order_id}",
    )
    return {"points": facts.points_used, "entry": entry.pk if entry else None}


def return_points(ctx: StepContext) -> None:
    points_return(key=ctx.compensation_key, deduct_key=ctx.key, reason="order not paid")


def _payment_output(payment: Any) -> dict[str, Any]:
    return {
        "payment_id": payment.pk,
        "charge_id": payment.gateway_charge_id,
        "amount": str(payment.amount),
    }


def process_payment(ctx: StepContext) -> dict[str, Any]:
    facts = _facts(ctx)
    payment = payment_charge(
        key=ctx.key,
        order_ref=facts.business_key,
        amount=facts.amount_due,
        method=facts.payment_method,
        currency=facts.currency,
    )
    return _payment_output(payment)


def resolve_payment(ctx: StepContext) -> dict[str, Any] | None:
    payment = payment_resolve(key=ctx.key)
    return _payment_output(payment) if payment is not None else None


def refund_payment(ctx: StepContext) -> None:
    payment_refund(key=ctx.compensation_key, charge_key=ctx.key, reason="order not completed")


def confirm_stock(ctx: StepContext) -> dict[str, Any]:
    reservation = stock_confirm(key=ctx.results["reserve_stock"]["reservation"])
    return {"reservation": reservation.key, "status": reservation.status}


def complete_order(ctx: StepContext) -> dict[str, Any]:
    return {"status": order_mark_paid(order_id=ctx.data["order_id"]).status}


def _notify(
    *, topic: str, event: str, business_key: str, order_id: int, email: str, **payload: Any
) -> dict[str, Any]:
    """Put the order's notification in the outbox, once per order and event (dedup key)."""
    message = outbox_put(
        topic=topic,
        key=business_key,
        dedup_key=f"{business_key}:{event}",
        payload={"order_id": order_id, "customer_email": email, **payload},
    )
    return {"message_id": str(message.pk)}


def notify_paid(ctx: StepContext) -> dict[str, Any]:
    facts = _facts(ctx)
    return _notify(
        topic=ORDER_PAID,
        event="paid",
        business_key=facts.business_key,
        order_id=facts.order_id,
        email=Customer.objects.values_list("email", flat=True).get(pk=facts.customer_id),
        currency=facts.currency,
        total=str(facts.total),
        amount_paid=str(facts.amount_due),
    )


def close_unpaid_order(ctx: StepContext) -> None:
    order_close_unpaid(order_id=ctx.data["order_id"], reason=_reason(ctx))


# A step that calls the gateway may take up to a minute [seed 001].
PAYMENT_TIMEOUT = 60.0

PLACE_ORDER = register(
    Saga(
        name="orders.place_order",
        version=1,
        description="Reserve, deduct points and charge for an order; undo all on failure.",
        tags=("orders", "payments"),
        steps=(
            Step("validate_customer", action=validate_customer, nothing_to_undo=True),
            Step("reserve_stock", action=reserve_stock, compensate=release_stock),
            Step("create_order", action=create_order, compensate=cancel_created_order),
            Step("deduct_points", action=deduct_points, compensate=return_points),
            Step(
                "process_payment",
                action=process_payment,
                compensate=refund_payment,
                resolve=resolve_payment,
                remote=True,
                pivot=True,
                timeout=PAYMENT_TIMEOUT,
            ),
            Step("confirm_stock", action=confirm_stock, retry=Retry(retries=10, max_delay=30)),
            Step("complete_order", action=complete_order, retry=Retry(retries=10, max_delay=30)),
            Step("notify", action=notify_paid, retry=Retry(retries=10, max_delay=30)),
        ),
        on_compensated=close_unpaid_order,
    )
)


# --- orders.cancel_order ------------------------------------------------------------------


def check_paid(ctx: StepContext) -> dict[str, Any]:
    order = _order(ctx)
    if order.status not in (Order.Status.PAID, Order.Status.CANCELLED):
        from orders.exceptions import OrderStateError

        raise OrderStateError(order_id=order.pk, status=order.status, wanted="CANCELLED")
    return {"status": order.status}


def refund_order(ctx: StepContext) -> dict[str, Any]:
    refund = payment_refund(
        key=ctx.key, charge_key=ctx.data["charge_key"], reason=ctx.data.get("reason", "")
    )
    return {"refund_id": refund.pk if refund else None}


def return_order_points(ctx: StepContext) -> dict[str, Any]:
    entry = points_return(
        key=ctx.key, deduct_key=ctx.data["points_key"], reason=ctx.data.get("reason", "")
    )
    return {"entry": entry.pk if entry else None}


def restock_order(ctx: StepContext) -> dict[str, Any]:
    order = _order(ctx)
    reservation = reservation_get(key=ctx.data["reservation_key"])
    restocked = []
    # Only units that were sold go back; a reservation never confirmed holds nothing.
    if reservation is not None and reservation.status == "CONFIRMED":
        for line in order.lines.all():
            stock_restock(
                key=f"{ctx.key}:{line.sku}",
                sku=line.sku,
                quantity=line.quantity,
                reason=f"order {order.pk} cancelled",
            )
            restocked.append(line.sku)
    return {"restocked": restocked}


def cancel_paid_order(ctx: StepContext) -> dict[str, Any]:
    order = order_cancel(order_id=ctx.data["order_id"], reason=ctx.data.get("reason", ""))
    return {"status": order.status}


def notify_cancelled(ctx: StepContext) -> dict[str, Any]:
    order = _order(ctx)
    return _notify(
        topic=ORDER_CANCELLED,
        event="cancelled",
        business_key=order.business_key,
        order_id=order.pk,
        email=order.customer.email,
        currency=order.currency,
        refunded=str(order.amount_due),
        reason=order.status_reason,
    )


FORWARD = Retry(retries=10, max_delay=30)

CANCEL_ORDER = register(
    Saga(
        name="orders.cancel_order",
        version=1,
        description="Refund a paid order, return its points and stock, cancel it.",
        tags=("orders", "payments", "cancellation"),
        steps=(
            Step("check_paid", action=check_paid, nothing_to_undo=True),
            Step(
                "refund",
                action=refund_order,
                remote=True,
                pivot=True,
                timeout=PAYMENT_TIMEOUT,
                retry=FORWARD,
            ),
            Step("return_points", action=return_order_points, retry=FORWARD),
            Step("restock", action=restock_order, retry=FORWARD),
            Step("cancel_order", action=cancel_paid_order, retry=FORWARD),
            Step("notify", action=notify_cancelled, retry=FORWARD),
        ),
    )
)
