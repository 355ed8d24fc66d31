"""The order APIs: one view per use case, each parsing its input and calling one service.

An API user sees only the orders it placed (``Order.placed_by``); staff see all. Another
user's order answers 404, not 403, so ids of other users' orders leak nothing.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inventory.exceptions import UnknownProduct
from inventory.selectors import product_prices
from l2c.api import BoundedJSONParser, ErrorSerializer, OrderSubmitThrottle, UserThrottle
from l2c.errors import DomainError
from orders.exceptions import CustomerNotFound, PointsExceedOrderValue
from orders.idempotency import HEADER as IDEMPOTENCY_HEADER
from orders.idempotency import idempotent, service_request_key
from orders.models import Order
from orders.selectors import customer_get, order_list_for_user
from orders.serializers import (
    OrderSerializer,
    OrderWithSagaSerializer,
    StrictIntegerField,
    order_data,
)
from orders.services import OrderItemIn, order_request_cancel, order_submit
from points.selectors import points_balance, points_value

MAX_LINES = 50
MAX_QUANTITY = 1000
# The columns behind the values: bigint ids, integer points, numeric(12, 2) amounts.
MAX_ID = 2**63 - 1
MAX_POINTS = 2**31 - 1
MAX_AMOUNT = Decimal("9999999999.99")
CENT = Decimal("0.01")

CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")


def correlation_id_from(request: Request) -> str:
    """The request's correlation id: the one CorrelationIdMiddleware settled on, else the
    caller's X-Correlation-ID when it is a safe token, else a new one."""
    settled = getattr(request, "correlation_id", None)
    if settled:
        return settled
    given = request.headers.get(CORRELATION_HEADER, "")
    return given if _CORRELATION_ID.fullmatch(given) else uuid.uuid4().hex


def _visible_order(request: Request, order_id: int) -> Order:
    order = (
        order_list_for_user(user_id=request.user.pk, is_staff=request.user.is_staff)
        .filter(pk=order_id)
        .first()
    )
    if order is None:
        raise exceptions.NotFound("No such order.")
    return order


def _error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: OpenApiResponse(ErrorSerializer) for code in codes}


_IDEMPOTENCY_PARAMETERS = [
    OpenApiParameter(
        IDEMPOTENCY_HEADER,
        str,
        OpenApiParameter.HEADER,
        description=(
            "Up to 255 characters, kept 24 hours per user. The same key and body replay the "
            "first answer; another body gives 422; a first request still running gives 409."
        ),
    ),
    OpenApiParameter(
        CORRELATION_HEADER,
        str,
        OpenApiParameter.HEADER,
        description="Up to 100 of [A-Za-z0-9._-]; echoed back and stored on the saga.",
    ),
]


class _CorrelatedApi(APIView):
    """Carries the caller's X-Correlation-ID into the saga and echoes it in the answer."""

    parser_classes = [BoundedJSONParser]
    # JSON only: the answer is stored and replayed byte for byte under an Idempotency-Key.
    renderer_classes = [JSONRenderer]
    correlation_id = ""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.correlation_id = correlation_id_from(request)
        super().initial(request, *args, **kwargs)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.correlation_id:
            response[CORRELATION_HEADER] = self.correlation_id
        return response


class CustomerDetailApi(APIView):
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        name = serializers.CharField()
        active = serializers.BooleanField()
        points_balance = serializers.IntegerField()

        class Meta:
            ref_name = "Customer"

    @extend_schema(
        operation_id="customer_retrieve",
        tags=["customers"],
        description="A customer with its loyalty points balance.",
        responses={200: OutputSerializer, **_error_responses(401, 403, 404)},
    )
    def get(self, request: Request, customer_id: int) -> Response:
        customer = customer_get(customer_id=customer_id)
        if customer is None:
            raise exceptions.NotFound("No such customer.")
        data = {
            "id": customer.pk,
            "name": customer.name,
            "active": customer.active,
            "points_balance": points_balance(customer_id=customer.pk),
        }
        return Response(self.OutputSerializer(data).data)


class OrderCreateApi(_CorrelatedApi):
    throttle_classes = [UserThrottle, OrderSubmitThrottle]

    class InputSerializer(serializers.Serializer):
        """Prices and totals are the server's: a client ``total`` is ignored."""

        class ItemSerializer(serializers.Serializer):
            sku = serializers.CharField(max_length=64, trim_whitespace=False)
            quantity = StrictIntegerField(min_value=1, max_value=MAX_QUANTITY)

            class Meta:
                ref_name = "OrderItemInput"

        customer = StrictIntegerField(min_value=1, max_value=MAX_ID)
        items = ItemSerializer(many=True, allow_empty=False, max_length=MAX_LINES)
        points_to_use = StrictIntegerField(min_value=0, max_value=MAX_POINTS, default=0)
        payment_method = serializers.CharField(
            max_length=64,
            validators=[
                RegexValidator(r"^pm_[A-Za-z0-9_]+\Z", "A payment method id starting with 'pm_'.")
            ],
        )

        class Meta:
            ref_name = "OrderCreateInput"

        def validate_customer(self, customer_id: int) -> int:
            # An inactive customer is accepted: refusing it is the saga's business decision.
            if customer_get(customer_id=customer_id) is None:
                raise serializers.ValidationError(f"No customer with id {customer_id}.")
            return customer_id

        def validate_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            seen: set[str] = set()
            errors: list[dict[str, list[str]]] = []
            for item in items:
                duplicate = item["sku"] in seen
                seen.add(item["sku"])
                errors.append(
                    {"sku": [f"Duplicate sku {item['sku']!r}: list each product once."]}
                    if duplicate
                    else {}
                )
            if any(errors):
                raise serializers.ValidationError(errors)
            return items

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            # The same rules order_submit enforces, checked here so that the client gets
            # field errors, and so that no total can overflow the amount columns.
            items = attrs["items"]
            catalogue = product_prices(skus=[item["sku"] for item in items])
            unknown = [
                {"sku": [f"Unknown or inactive product {item['sku']!r}."]}
                if item["sku"] not in catalogue
                else {}
                for item in items
            ]
            if any(unknown):
                raise serializers.ValidationError({"items": unknown})
            # order_submit prices the lines from this same read instead of a second one.
            self.catalogue = catalogue
            line_totals = [
                (catalogue[item["sku"]].price * item["quantity"]).quantize(CENT) for item in items
            ]
            total = sum(line_totals, Decimal("0"))
            if total > MAX_AMOUNT:
                raise serializers.ValidationError(
                    {"items": [f"The order total {total} is over the limit of {MAX_AMOUNT}."]}
                )
            value = points_value(points=attrs["points_to_use"])
            if value > total:
                raise serializers.ValidationError(
                    {
                        "points_to_use": [
                            f"{attrs['points_to_use']} points are worth {value} "
                            f"{settings.CURRENCY}, more than the order total {total}."
                        ]
                    }
                )
            return attrs

    @extend_schema(
        operation_id="order_create",
        tags=["orders"],
        description=(
            "Place an order: 202 with the order, priced from the catalogue (a client total "
            "is ignored), and the saga that will reserve stock, take points and payment."
        ),
        request=InputSerializer,
        parameters=_IDEMPOTENCY_PARAMETERS,
        responses={
            202: OrderWithSagaSerializer,
            **_error_responses(400, 401, 403, 409, 413, 422, 429),
        },
    )
    @idempotent
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            order, saga = order_submit(
                customer_id=data["customer"],
                items=[OrderItemIn(item["sku"], item["quantity"]) for item in data["items"]],
                payment_method=data["payment_method"],
                request_key=service_request_key(request),
                points_to_use=data["points_to_use"],
                placed_by_id=request.user.pk,
                correlation_id=self.correlation_id,
                catalogue=serializer.catalogue,
            )
        except (UnknownProduct, CustomerNotFound, PointsExceedOrderValue) as exc:
            # Checked above already; raised here only when the catalogue or the customer
            # changed in between, and still the client's input to fix.
            raise _as_field_error(exc) from exc
        body = order_data(order, saga=saga)
        location = reverse("api:order-detail", kwargs={"order_id": order.pk})
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": location})


class OrderDetailApi(APIView):
    @extend_schema(
        operation_id="order_retrieve",
        tags=["orders"],
        description="One of the caller's orders (any order for staff).",
        responses={200: OrderSerializer, **_error_responses(401, 403, 404)},
    )
    def get(self, request: Request, order_id: int) -> Response:
        return Response(order_data(_visible_order(request, order_id)))


class OrderCancelApi(_CorrelatedApi):
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(min_length=1, max_length=300)

        class Meta:
            ref_name = "OrderCancelInput"

    @extend_schema(
        operation_id="order_cancel",
        tags=["orders"],
        request=InputSerializer,
        parameters=_IDEMPOTENCY_PARAMETERS,
        responses={
            202: OrderWithSagaSerializer,
            **_error_responses(400, 401, 403, 404, 409, 413, 422, 429),
        },
        description="Start the cancellation of a paid order; 409 (order_state) otherwise.",
    )
    @idempotent
    def post(self, request: Request, order_id: int) -> Response:
        order = _visible_order(request, order_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        saga = order_request_cancel(
            order_id=order.pk,
            reason=serializer.validated_data["reason"],
            correlation_id=self.correlation_id,
        )
        body = order_data(order, saga=saga)
        location = reverse("api:saga-detail", kwargs={"saga_id": saga.pk})
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": location})


def _as_field_error(exc: DomainError) -> exceptions.ValidationError:
    field = {
        UnknownProduct.code: "items",
        CustomerNotFound.code: "customer",
        PointsExceedOrderValue.code: "points_to_use",
    }[exc.code]
    return exceptions.ValidationError({field: [exceptions.ErrorDetail(exc.message, exc.code)]})
