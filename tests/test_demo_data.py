from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from inventory.models import Product, Stock
from orders.models import Customer
from points.models import PointsAccount, PointsEntry


def snapshot() -> dict[str, object]:
    return {
        "products": list(Product.objects.values_list("sku", "price").order_by("sku")),
        "stock": list(Stock.objects.values_list("on_hand", "reserved").order_by("product_id")),
        "customers": Customer.objects.count(),
        "balances": list(PointsAccount.objects.values_list("balance", flat=True).order_by("pk")),
        "entries": PointsEntry.objects.count(),
        "users": get_user_model().objects.count(),
        "tokens": list(Token.objects.values_list("key", flat=True)),
    }


@pytest.mark.django_db
def test_load_demo_twice_changes_nothing_and_the_admin_can_log_in(client):
    call_command("load_demo", stdout=io.StringIO())
    first = snapshot()
    call_command("load_demo", stdout=io.StringIO())

    assert snapshot() == first
    assert first["products"] and first["customers"] and first["tokens"]
    assert client.login(username="admin", password="admin-pass-123")
    assert client.get("/admin/").status_code == 200
