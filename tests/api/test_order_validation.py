"""Bad input to POST /api/orders/: 400 (or 413) with the error shape, never a 500, no rows."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import RequestDataTooBig

from inventory.exceptions import UnknownProduct
from l2c.api import BoundedJSONParser, RequestTooLarge, exception_handler
from orders.exceptions import CreditLimitExceeded, CustomerNotFound, PointsExceedOrderValue
from orders.models import IdempotencyRecord, Order
from sagas.models import SagaInstance
from tests.api.conftest import ORDERS_URL
from tests.factories import make_product

Body = dict[str, Any]


def with_quantity(quantity: Any) -> Callable[[Body], Body]:
    def change(body: Body) -> Body:
        body["items"] = [{"sku": "KB-1", "quantity": quantity}]
        return body

    return change


def with_items(items: Any) -> Callable[[Body], Body]:
    def change(body: Body) -> Body:
        body["items"] = items
        return body

    return change


def with_field(name: str, value: Any) -> Callable[[Body], Body]:
    def change(body: Body) -> Body:
        body[name] = value
        return body

    return change


def without(name: str) -> Callable[[Body], Body]:
    def change(body: Body) -> Body:
        del body[name]
        return body

    return change


# Each case: a change to a valid body, and the field expected in the errors.
BAD_BODIES = [
    pytest.param(with_quantity(0), "items", id="quantity-zero"),
    pytest.param(with_quantity(-1), "items", id="quantity-negative"),
    pytest.param(with_quantity(1.5), "items", id="quantity-fractional"),
    pytest.param(with_quantity(1.0), "items", id="quantity-whole-float"),
    pytest.param(with_quantity("1"), "items", id="quantity-string"),
    pytest.param(with_quantity(True), "items", id="quantity-boolean"),
    pytest.param(with_quantity(2**63), "items", id="quantity-2**63"),
    pytest.param(with_quantity(10**6), "items", id="quantity-10**6"),
    pytest.param(with_quantity(None), "items", id="quantity-null"),
    pytest.param(with_items([{"sku": "KB-1"}]), "items", id="quantity-missing"),
    pytest.param(with_items([{"sku": "NOPE-404", "quantity": 1}]), "items", id="sku-unknown"),
    pytest.param(with_items([{"sku": "OLD-1", "quantity": 1}]), "items", id="sku-inactive"),
    pytest.param(with_items([{"sku": None, "quantity": 1}]), "items", id="sku-null"),
    pytest.param(with_items([{"sku": "S" * 65, "quantity": 1}]), "items", id="sku-too-long"),
    pytest.param(
        with_items([{"sku": "KB-1", "quantity": 1}, {"sku": "KB-1", "quantity": 2}]),
        "items",
        id="sku-duplicate",
    ),
    pytest.param(
        with_items([{"sku": f"SKU-{n}", "quantity": 1} for n in range(51)]),
        "items",
        id="lines-51",
    ),
    pytest.param(with_items([]), "items", id="lines-none"),
    pytest.param(with_items({"sku": "KB-1", "quantity": 1}), "items", id="items-dict"),
    pytest.param(with_items("KB-1"), "items", id="items-string"),
    pytest.param(with_items(["KB-1"]), "items", id="items-of-strings"),
    pytest.param(with_field("customer", "abc"), "customer", id="customer-string"),
    pytest.param(with_field("customer", "1"), "customer", id="customer-numeric-string"),
    pytest.param(with_field("customer", 987654321), "customer", id="customer-unknown"),
    pytest.param(with_field("customer", 0), "customer", id="customer-zero"),
    pytest.param(with_field("customer", 2**63), "customer", id="customer-2**63"),
    pytest.param(with_field("customer", None), "customer", id="customer-null"),
    pytest.param(without("customer"), "customer", id="missing-customer"),
    pytest.param(without("items"), "items", id="missing-items"),
    pytest.param(without("payment_method"), "payment_method", id="missing-payment-method"),
    pytest.param(with_field("payment_method", ""), "payment_method", id="payment-method-empty"),
    pytest.param(
        with_field("payment_method", "card_visa"), "payment_method", id="payment-method-no-prefix"
    ),
    pytest.param(
        with_field("payment_method", "pm_" + "x" * 62),
        "payment_method",
        id="payment-method-too-long",
    ),
    pytest.param(with_field("payment_method", 42), "payment_method", id="payment-method-number"),
    pytest.param(with_field("points_to_use", -1), "points_to_use", id="points-negative"),
    pytest.param(with_field("points_to_use", 2.5), "points_to_use", id="points-fractional"),
    pytest.param(with_field("points_to_use", "10"), "points_to_use", id="points-string"),
    pytest.param(with_field("points_to_use", None), "points_to_use", id="points-null"),
    # 21 000 points are worth 210.00, more than the 209.50 order.
    pytest.param(
        with_field("points_to_use", 21_000), "points_to_use", id="points-above-order-value"
    ),
    pytest.param(with_field("points_to_use", 2**31), "points_to_use", id="points-beyond-int32"),
]


def assert_nothing_written() -> None:
    assert Order.objects.count() == 0
    assert SagaInstance.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.parametrize(("change", "field"), BAD_BODIES)
@pytest.mark.django_db
def test_bad_order_body_gets_400_with_a_field_error_and_writes_nothing(
    user_client, order_body, change, field
):
    response = user_client.post(
        ORDERS_URL, change(order_body()), format="json", HTTP_IDEMPOTENCY_KEY="bad-input-1"
    )

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid"
    assert body["message"]
    assert field in body["errors"], body
    assert_nothing_written()


@pytest.mark.django_db
def test_field_errors_name_the_offending_sku(user_client, order_body):
    body = order_body(items=[{"sku": "KB-1", "quantity": 1}, {"sku": "NOPE-404", "quantity": 1}])

    errors = user_client.post(ORDERS_URL, body, format="json").json()["errors"]

    assert errors["items"][0] == {}
    assert "NOPE-404" in errors["items"][1]["sku"][0]


@pytest.mark.django_db
def test_an_order_total_beyond_the_amount_columns_is_a_400_not_a_database_error(
    user_client, order_body
):
    make_product(sku="YACHT", price="99999999.99", on_hand=5000)

    response = user_client.post(
        ORDERS_URL, order_body(items=[{"sku": "YACHT", "quantity": 1000}]), format="json"
    )

    assert response.status_code == 400
    assert "items" in response.json()["errors"]
    assert_nothing_written()


RAW_BODIES = [
    pytest.param(json.dumps([{"customer": 1}]), id="json-list"),
    pytest.param(json.dumps("order"), id="json-string"),
    pytest.param("42", id="json-number"),
    pytest.param("null", id="json-null"),
    pytest.param('{"customer": 1, "items": [', id="invalid-json"),
    pytest.param('{"customer": NaN}', id="nan"),
    pytest.param('{"customer": ' + "9" * 5000 + "}", id="huge-integer"),
]


@pytest.mark.parametrize("raw", RAW_BODIES)
@pytest.mark.django_db
def test_a_body_that_is_not_a_json_object_gets_400(user_client, catalogue, raw):
    response = user_client.post(
        ORDERS_URL, raw, content_type="application/json", HTTP_IDEMPOTENCY_KEY="raw-1"
    )

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] in ("invalid", "parse_error")
    assert body["message"]
    assert_nothing_written()


@pytest.mark.django_db
def test_a_body_over_the_upload_limit_gets_413(user_client, order_body, settings):
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 256 * 1024
    body = order_body(padding="x" * 1024 * 1024)

    response = user_client.post(
        ORDERS_URL, json.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY="big"
    )

    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert_nothing_written()


def test_the_parser_counts_what_it_reads_whatever_the_declared_length(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    parser = BoundedJSONParser()

    with pytest.raises(RequestTooLarge):
        parser.parse(io.BytesIO(b'{"x": "' + b"y" * 2048 + b'"}'), parser_context={})
    assert parser.parse(io.BytesIO(b'{"x": 1}'), parser_context={}) == {"x": 1}


def test_django_request_data_too_big_is_answered_with_413():
    response = exception_handler(RequestDataTooBig("too big"), {})

    assert response.status_code == 413
    assert response.data["code"] == "request_too_large"


@pytest.mark.django_db
def test_a_form_encoded_body_is_refused_as_unsupported(user_client, catalogue):
    response = user_client.post(ORDERS_URL, "customer=1", content_type="text/plain")

    assert response.status_code == 415
    assert_nothing_written()


@pytest.mark.django_db
def test_an_overlong_idempotency_key_gets_400(user_client, order_body):
    response = user_client.post(
        ORDERS_URL, order_body(), format="json", HTTP_IDEMPOTENCY_KEY="k" * 300
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]
    assert_nothing_written()


@pytest.mark.parametrize("key", ["", "tab\tkey", "clé"])
@pytest.mark.django_db
def test_an_empty_or_unprintable_idempotency_key_gets_400(user_client, order_body, key):
    response = user_client.post(ORDERS_URL, order_body(), format="json", HTTP_IDEMPOTENCY_KEY=key)

    assert response.status_code == 400
    assert_nothing_written()


@pytest.mark.django_db
def test_a_key_of_255_characters_is_accepted(user_client, order_body):
    response = user_client.post(
        ORDERS_URL, order_body(), format="json", HTTP_IDEMPOTENCY_KEY="k" * 255
    )

    assert response.status_code == 202


@pytest.mark.parametrize(
    ("error", "field"),
    [
        pytest.param(UnknownProduct(skus=["KB-1"]), "items", id="product-retired-meanwhile"),
        pytest.param(CustomerNotFound(customer_id=1), "customer", id="customer-gone-meanwhile"),
        pytest.param(PointsExceedOrderValue(points=1), "points_to_use", id="price-dropped"),
    ],
)
@pytest.mark.django_db
def test_input_errors_found_by_the_service_are_400_field_errors(
    user_client, order_body, monkeypatch, error, field
):
    def racing_submit(**kwargs):
        raise error

    monkeypatch.setattr("orders.apis.order_submit", racing_submit)

    response = user_client.post(ORDERS_URL, order_body(), format="json", HTTP_IDEMPOTENCY_KEY="r")

    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert_nothing_written()


@pytest.mark.django_db
def test_other_business_errors_from_the_service_are_409_with_their_code(
    user_client, order_body, monkeypatch
):
    def refusing_submit(**kwargs):
        raise CreditLimitExceeded(customer_id=1)

    monkeypatch.setattr("orders.apis.order_submit", refusing_submit)

    response = user_client.post(ORDERS_URL, order_body(), format="json", HTTP_IDEMPOTENCY_KEY="r")

    assert response.status_code == 409
    assert response.json()["code"] == "over_credit_limit"
    assert response.json()["extra"] == {"customer_id": 1}
    assert_nothing_written()
