"""Token authentication: who the API takes a request to come from."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from orders.models import Order
from tests.api.conftest import ORDERS_URL, make_user, token_client


@pytest.mark.django_db
def test_a_token_authenticates_its_user(api_user, order_body):
    client = token_client(api_user)

    response = client.post(ORDERS_URL, order_body(), format="json")

    assert response.status_code == 202, response.content
    assert Order.objects.get().placed_by_id == api_user.pk
    # Another user's token does not see that order.
    other = token_client(make_user("someone-else"))
    assert other.get(f"{ORDERS_URL}{response.json()['id']}/").status_code == 404


@pytest.mark.django_db
def test_an_unknown_token_is_refused_with_401(catalogue):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")

    response = client.get(f"/api/customers/{catalogue['customer'].pk}/")

    assert response.status_code == 401
    assert response.json() == {"code": "authentication_failed", "message": "Invalid token."}


@pytest.mark.django_db
def test_the_token_of_an_inactive_user_is_refused_with_401(api_user, catalogue):
    client = token_client(api_user)
    api_user.is_active = False
    api_user.save(update_fields=["is_active"])

    response = client.get(f"/api/customers/{catalogue['customer'].pk}/")

    assert response.status_code == 401
    assert response.json() == {
        "code": "authentication_failed",
        "message": "User inactive or deleted.",
    }
