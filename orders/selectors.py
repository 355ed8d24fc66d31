from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from orders.models import Customer, Order


def customer_get(*, customer_id: int) -> Customer | None:
    return Customer.objects.filter(pk=customer_id).first()


def order_get(*, order_id: int) -> Order | None:
    return (
        Order.objects.select_related("customer")
        .prefetch_related("lines")
        .filter(pk=order_id)
        .first()
    )


def order_list_for_user(*, user_id: int, is_staff: bool) -> QuerySet[Order]:
    """Orders a user may see: staff see all, an API user only what it placed."""
    orders = Order.objects.select_related("customer").prefetch_related("lines")
    return orders if is_staff else orders.filter(placed_by_id=user_id)


def saga_visible_to(*, user: Any, saga: Any) -> bool:
    """An API user may see the sagas of the orders it placed (business key ``order:<id>``)."""
    prefix = "order:"
    order_id = saga.business_key.removeprefix(prefix)
    if not saga.business_key.startswith(prefix) or not order_id.isdigit():
        return False
    return Order.objects.filter(pk=int(order_id), placed_by_id=user.pk).exists()
