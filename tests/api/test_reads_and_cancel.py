"""Products, customers, orders and sagas: reads, 404s and the cancel request."""

from __future__ import annotations

import uuid

import pytest

from inventory.services import ItemIn, stock_reserve
from orders.models import IdempotencyRecord, Order
from sagas.models import SagaEvent, SagaInstance, SagaStep
from tests.api.conftest import ORDERS_URL, token_client


@pytest.mark.django_db
def test_products_show_available_stock_and_follow_a_reservation(
    user_client, catalogue, django_capture_on_commit_callbacks
):
    before = user_client.get("/api/products/")
    with django_capture_on_commit_callbacks(execute=True):
        stock_reserve(key="test:reserve:1", items=[ItemIn(sku="KB-1", quantity=4)])
    after = user_client.get("/api/products/")

    assert before.status_code == after.status_code == 200
    products = {p["sku"]: p for p in before.json()}
    assert products["KB-1"] == {
        "sku": "KB-1",
        "name": "Test product",
        "price": "89.90",
        "available": 10,
    }
    assert "OLD-1" not in products
    assert {p["sku"]: p["available"] for p in after.json()}["KB-1"] == 6


@pytest.mark.django_db
def test_customer_shows_its_points_balance(user_client, catalogue):
    customer = catalogue["customer"]

    response = user_client.get(f"/api/customers/{customer.pk}/")

    assert response.status_code == 200
    assert response.json() == {
        "id": customer.pk,
        "name": customer.name,
        "active": True,
        "points_balance": 1000,
    }


@pytest.mark.parametrize(
    "url",
    [
        "/api/customers/987654321/",
        "/api/customers/99999999999999999999999/",
        "/api/orders/987654321/",
        "/api/orders/99999999999999999999999/",
        "/api/orders/not-a-number/",
        "/api/sagas/00000000-0000-0000-0000-000000000000/",
        f"/api/sagas/{uuid.uuid4()}/",
        "/api/sagas/not-a-uuid/",
        "/api/sagas/12345/",
        "/api/no-such-endpoint/",
    ],
)
@pytest.mark.django_db
def test_unknown_or_malformed_ids_get_a_json_404(user_client, url):
    response = user_client.get(url)

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.django_db
def test_saga_detail_shows_steps_errors_and_history(user_client, order_body):
    created = user_client.post(ORDERS_URL, order_body(), format="json").json()
    saga = SagaInstance.objects.get(pk=created["saga"]["id"])
    SagaStep.objects.create(
        saga=saga,
        name="reserve_stock",
        index=0,
        status=SagaStep.Status.FAILED,
        attempts=3,
        duration_ms=12,
        error_type="inventory.exceptions.InsufficientStock",
        error_code="insufficient_stock",
        error_message="Not enough stock for the requested quantity.",
        error_traceback="Traceback: secret internals",
    )
    SagaInstance.objects.filter(pk=saga.pk).update(
        dead_letter_reason="compensation failed", error_code="insufficient_stock"
    )

    body = user_client.get(created["saga"]["url"]).json()

    assert body["definition"] == "orders.place_order"
    assert body["version"] >= 1
    assert body["status"] == "STARTED"
    assert body["business_key"] == f"order:{created['id']}"
    assert body["error_code"] == "insufficient_stock"
    assert body["dead_letter_reason"] == "compensation failed"
    assert body["steps"] == [
        {
            "name": "reserve_stock",
            "index": 0,
            "status": "FAILED",
            "compensation_status": "NONE",
            "attempts": 3,
            "compensation_attempts": 0,
            "started_at": None,
            "finished_at": None,
            "duration_ms": 12,
            "compensated_at": None,
            "last_error": {
                "type": "inventory.exceptions.InsufficientStock",
                "code": "insufficient_stock",
                "message": "Not enough stock for the requested quantity.",
            },
        }
    ]
    assert [event["kind"] for event in body["events"]] == [SagaEvent.Kind.STARTED]
    assert set(body["events"][0]) == {
        "kind",
        "step",
        "attempt",
        "status",
        "actor",
        "reason",
        "created_at",
    }
    # The payload and tracebacks are for operators only.
    assert "context" not in body
    assert "secret internals" not in str(body)


@pytest.mark.django_db
def test_a_saga_that_is_not_an_orders_is_hidden_from_api_users(
    user_client, staff_user, order_body
):
    created = user_client.post(ORDERS_URL, order_body(), format="json").json()
    SagaInstance.objects.filter(pk=created["saga"]["id"]).update(business_key="batch:7")

    assert user_client.get(created["saga"]["url"]).status_code == 404
    assert token_client(staff_user).get(created["saga"]["url"]).status_code == 200


@pytest.mark.django_db
def test_cancel_of_an_unpaid_order_is_409_order_state(user_client, order_body):
    created = user_client.post(ORDERS_URL, order_body(), format="json").json()

    response = user_client.post(
        f"/api/orders/{created['id']}/cancel/",
        {"reason": "changed my mind"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="cancel-1",
    )

    assert response.status_code == 409
    assert response.json()["code"] == "order_state"
    assert SagaInstance.objects.count() == 1
    # The refusal had no effect, so the key is free for a retry once the order is paid.
    assert not IdempotencyRecord.objects.filter(key="cancel-1").exists()


@pytest.mark.django_db
def test_cancel_of_a_paid_order_starts_the_cancel_saga(user_client, order_body):
    created = user_client.post(ORDERS_URL, order_body(), format="json").json()
    Order.objects.filter(pk=created["id"]).update(status=Order.Status.PAID)
    url = f"/api/orders/{created['id']}/cancel/"

    first = user_client.post(
        url,
        {"reason": "changed my mind"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="cancel-1",
        HTTP_X_CORRELATION_ID="cancel-flow",
    )
    again = user_client.post(
        url, {"reason": "changed my mind"}, format="json", HTTP_IDEMPOTENCY_KEY="cancel-1"
    )

    assert first.status_code == 202, first.content
    saga = SagaInstance.objects.get(definition="orders.cancel_order")
    assert first.json()["saga"]["id"] == str(saga.pk)
    assert first["Location"] == f"/api/sagas/{saga.pk}/"
    assert first["X-Correlation-ID"] == "cancel-flow"
    assert saga.correlation_id == "cancel-flow"
    assert saga.context["reason"] == "changed my mind"
    assert again.content == first.content
    assert SagaInstance.objects.filter(definition="orders.cancel_order").count() == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"reason": ""}, id="empty"),
        pytest.param({"reason": "   "}, id="blank"),
        pytest.param({"reason": "x" * 301}, id="too-long"),
        pytest.param({"reason": None}, id="null"),
        pytest.param({}, id="missing"),
        pytest.param([], id="not-an-object"),
    ],
)
@pytest.mark.django_db
def test_cancel_without_a_proper_reason_is_400(user_client, order_body, body):
    created = user_client.post(ORDERS_URL, order_body(), format="json").json()
    Order.objects.filter(pk=created["id"]).update(status=Order.Status.PAID)

    response = user_client.post(
        f"/api/orders/{created['id']}/cancel/", body, format="json", HTTP_IDEMPOTENCY_KEY="c-1"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert SagaInstance.objects.filter(definition="orders.cancel_order").count() == 0
    assert not IdempotencyRecord.objects.filter(key="c-1").exists()


@pytest.mark.django_db
def test_points_worth_exactly_the_order_total_are_accepted(user_client, order_body):
    response = user_client.post(ORDERS_URL, order_body(points_to_use=20_950), format="json")

    assert response.status_code == 202
    assert response.json()["amount_due"] == "0.00"
