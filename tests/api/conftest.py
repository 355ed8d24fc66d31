"""Users, clients and a catalogue for the API tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import make_customer, make_product

ORDERS_URL = "/api/orders/"


def make_user(username: str, *, staff: bool = False) -> Any:
    return get_user_model().objects.create_user(
        username=username, password="unused-password", is_staff=staff
    )


def token_client(user: Any) -> APIClient:
    """A client authenticated the way API users are: with a DRF token."""
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api_user() -> Any:
    return make_user("shop-frontend")


@pytest.fixture
def other_user() -> Any:
    return make_user("partner-app")


@pytest.fixture
def staff_user() -> Any:
    return make_user("operator", staff=True)


@pytest.fixture
def user_client(api_user: Any) -> APIClient:
    return token_client(api_user)


@pytest.fixture
def catalogue() -> dict[str, Any]:
    """Two products and a customer with points; prices chosen so totals are easy to read."""
    return {
        "keyboard": make_product(sku="KB-1", price="89.90", on_hand=10),
        "cable": make_product(sku="CABLE-1", price="9.90", on_hand=100),
        "retired": make_product(sku="OLD-1", price="5.00", on_hand=10, active=False),
        "customer": make_customer(points=1000),
    }


@pytest.fixture
def order_body(catalogue: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    def build(**overrides: Any) -> dict[str, Any]:
        body = {
            "customer": catalogue["customer"].pk,
            "items": [{"sku": "KB-1", "quantity": 2}, {"sku": "CABLE-1", "quantity": 3}],
            "points_to_use": 250,
            "payment_method": "pm_card_visa",
        }
        body.update(overrides)
        return body

    return build
