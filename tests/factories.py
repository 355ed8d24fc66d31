"""Plain helpers that make rows through the services, with overridable defaults."""

from __future__ import annotations

import itertools
from decimal import Decimal

from inventory.models import Product
from inventory.services import product_create
from orders.models import Customer
from orders.services import customer_create
from points.services import points_account_open, points_award

_counter = itertools.count(1)


def make_product(
    *, sku: str | None = None, price: str = "10.00", on_hand: int = 10, active: bool = True
) -> Product:
    return product_create(
        sku=sku or f"SKU-{next(_counter)}",
        name="Test product",
        price=Decimal(price),
        on_hand=on_hand,
        active=active,
    )


def make_customer(
    *, points: int = 0, credit_limit: str = "10000.00", active: bool = True
) -> Customer:
    n = next(_counter)
    customer = customer_create(
        name=f"Customer {n}",
        email=f"customer{n}@example.com",
        credit_limit=Decimal(credit_limit),
        active=active,
    )
    points_account_open(customer_id=customer.pk)
    if points:
        points_award(key=f"test:award:{customer.pk}", customer_id=customer.pk, amount=points)
    return customer
