from __future__ import annotations

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
