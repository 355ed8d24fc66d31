from __future__ import annotations

from decimal import Decimal

import pytest

from orders.models import Order
from sagas.models import SagaInstance
from tests.api.conftest import ORDERS_URL, token_client


@pytest.mark.django_db
def test_post_order_answers_202_with_server_priced_order_saga_and_location(
    user_client, api_user, order_body
):
    response = user_client.post(ORDERS_URL, order_body(total="0.01"), format="json")

    assert response.status_code == 202, response.content
    body = response.json()
    order = Order.objects.get()
    assert response["Location"] == f"/api/orders/{order.pk}/"
    assert order.placed_by_id == api_user.pk
    # The client's "total" is ignored: 2 x 89.90 + 3 x 9.90, less 250 points at 0.01.
    assert body["total"] == "209.50" and order.total == Decimal("209.50")
    assert body["amount_due"] == "207.00"
    assert body["points_used"] == 250
    assert body["currency"] == "EUR"
    assert body["status"] == "PLACED"
    assert body["status_reason"] == ""
    assert body["lines"] == [
        {
            "sku": "KB-1",
            "name": "Test product",
            "unit_price": "89.90",
            "quantity": 2,
            "line_total": "179.80",
        },
        {
            "sku": "CABLE-1",
            "name": "Test product",
            "unit_price": "9.90",
            "quantity": 3,
            "line_total": "29.70",
        },
    ]
    saga = SagaInstance.objects.get()
    assert body["saga"] == {
        "id": str(saga.pk),
        "definition": "orders.place_order",
        "status": "STARTED",
        "url": f"/api/sagas/{saga.pk}/",
    }
    assert saga.business_key == f"order:{order.pk}"


@pytest.mark.django_db
def test_post_order_passes_a_valid_correlation_id_to_the_saga_and_echoes_it(
    user_client, order_body
):
    response = user_client.post(
        ORDERS_URL, order_body(), format="json", HTTP_X_CORRELATION_ID="checkout-42.a_b"
    )

    assert response.status_code == 202
    assert response["X-Correlation-ID"] == "checkout-42.a_b"
    assert SagaInstance.objects.get().correlation_id == "checkout-42.a_b"


@pytest.mark.parametrize("given", ["", "has space", "x" * 101, "semi;colon", "é"])
@pytest.mark.django_db
def test_post_order_replaces_an_unsafe_correlation_id_with_a_new_one(
    user_client, order_body, given
):
    response = user_client.post(
        ORDERS_URL, order_body(), format="json", HTTP_X_CORRELATION_ID=given
    )

    assert response.status_code == 202
    generated = response["X-Correlation-ID"]
    assert generated != given and len(generated) == 32
    assert SagaInstance.objects.get().correlation_id == generated


@pytest.mark.django_db
def test_post_order_accepts_an_inactive_customer_and_leaves_the_refusal_to_the_saga(
    user_client, order_body
):
    from tests.factories import make_customer

    inactive = make_customer(active=False)

    response = user_client.post(ORDERS_URL, order_body(customer=inactive.pk), format="json")

    assert response.status_code == 202
    assert Order.objects.get().customer_id == inactive.pk


@pytest.mark.django_db
def test_owner_reads_its_order_and_saga(user_client, order_body):
    created = user_client.post(ORDERS_URL, order_body(), format="json").json()

    order = user_client.get(f"/api/orders/{created['id']}/")
    saga = user_client.get(created["saga"]["url"])

    assert order.status_code == 200
    assert order.json()["lines"] == created["lines"]
    assert order.json()["total"] == "209.50"
    assert saga.status_code == 200
    assert saga.json()["id"] == created["saga"]["id"]
    assert saga.json()["business_key"] == f"order:{created['id']}"


@pytest.mark.django_db
def test_another_api_user_gets_404_for_the_order_and_its_saga(user_client, other_user, order_body):
    created = user_client.post(ORDERS_URL, order_body(), format="json").json()
    other = token_client(other_user)

    assert other.get(f"/api/orders/{created['id']}/").status_code == 404
    assert other.get(created["saga"]["url"]).status_code == 404
    cancel = other.post(f"/api/orders/{created['id']}/cancel/", {"reason": "x"}, format="json")
    assert cancel.status_code == 404


@pytest.mark.django_db
def test_staff_see_every_order_and_saga(user_client, staff_user, order_body):
    created = user_client.post(ORDERS_URL, order_body(), format="json").json()
    staff = token_client(staff_user)

    assert staff.get(f"/api/orders/{created['id']}/").status_code == 200
    assert staff.get(created["saga"]["url"]).status_code == 200


@pytest.mark.django_db
def test_session_authentication_works_for_reads(api_user, user_client, order_body):
    from rest_framework.test import APIClient

    created = user_client.post(ORDERS_URL, order_body(), format="json").json()
    browser = APIClient()
    browser.force_login(api_user)

    assert browser.get(f"/api/orders/{created['id']}/").status_code == 200


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", ORDERS_URL),
        ("get", "/api/orders/1/"),
        ("post", "/api/orders/1/cancel/"),
        ("get", "/api/products/"),
        ("get", "/api/customers/1/"),
        ("get", "/api/sagas/00000000-0000-0000-0000-000000000000/"),
    ],
)
@pytest.mark.django_db
def test_anonymous_requests_are_refused_and_create_nothing(method, url, order_body):
    from rest_framework.test import APIClient

    response = getattr(APIClient(), method)(url, order_body(), format="json")

    assert response.status_code in (401, 403)
    assert set(response.json()) == {"code", "message"}
    assert Order.objects.count() == 0
    assert SagaInstance.objects.count() == 0


@pytest.mark.django_db
def test_a_bad_token_is_refused(order_body):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    response = client.post(ORDERS_URL, order_body(), format="json")

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"
    assert Order.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("time_zone", ["UTC", "Europe/Paris"])
def test_the_answers_are_the_documented_serializers_field_for_field(
    user_client, order_body, settings, time_zone
):
    import json

    from django.utils import timezone

    from orders.serializers import OrderSerializer, OrderWithSagaSerializer
    from orders.services import order_cancel

    settings.TIME_ZONE = time_zone
    with timezone.override(time_zone):
        response = user_client.post(ORDERS_URL, order_body(), format="json")
        order = Order.objects.get()
        saga = SagaInstance.objects.get()
        documented = OrderWithSagaSerializer(order, context={"saga": saga}).data
        assert response.json() == json.loads(json.dumps(documented))

        # A reason, a status other than PLACED and amounts without cents, read back.
        order_cancel(order_id=order.pk, reason="Kunde hat storniert, Grüße")
        Order.objects.filter(pk=order.pk).update(points_value=Decimal("3"))
        order = Order.objects.get()
        detail = user_client.get(f"{ORDERS_URL}{order.pk}/")
        assert detail.json() == json.loads(json.dumps(OrderSerializer(order).data))
        assert detail.json()["points_value"] == "3.00"
