"""Serializers shared by the order APIs: a strict integer field and the order's output."""

from __future__ import annotations

from datetime import datetime
from decimal import Context, Decimal
from typing import Any

from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orders.models import Order
from sagas.models import SagaInstance


class StrictIntegerField(serializers.IntegerField):
    """An integer sent as a JSON integer.

    DRF's IntegerField also takes "1", 1.0 and true; for quantities and ids that is a
    client bug worth a 400, not a value to guess at.
    """

    default_error_messages = {"invalid": "A JSON integer is required."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class OrderLineSerializer(serializers.Serializer):
    sku = serializers.CharField()
    name = serializers.CharField()
    unit_price = serializers.DecimalField(max_digits=12, decimal_places=2)
    quantity = serializers.IntegerField()
    line_total = serializers.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        ref_name = "OrderLine"


class SagaLinkSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    definition = serializers.CharField()
    status = serializers.ChoiceField(choices=SagaInstance.Status.choices)
    url = serializers.SerializerMethodField()

    class Meta:
        ref_name = "SagaLink"

    def get_url(self, saga: SagaInstance) -> str:
        return reverse("api:saga-detail", kwargs={"saga_id": saga.pk})


class OrderSerializer(serializers.Serializer):
    """An order as the API shows it; every amount was computed by the server."""

    id = serializers.IntegerField()
    customer = serializers.IntegerField(source="customer_id")
    status = serializers.ChoiceField(choices=Order.Status.choices)
    status_reason = serializers.CharField()
    currency = serializers.CharField()
    total = serializers.DecimalField(max_digits=12, decimal_places=2)
    points_used = serializers.IntegerField()
    points_value = serializers.DecimalField(max_digits=12, decimal_places=2)
    amount_due = serializers.DecimalField(max_digits=12, decimal_places=2)
    payment_method = serializers.CharField()
    created_at = serializers.DateTimeField()
    lines = OrderLineSerializer(many=True)

    class Meta:
        ref_name = "Order"


class OrderWithSagaSerializer(OrderSerializer):
    """The order and the saga just started for it."""

    # The saga comes in context["saga"]: it is not an attribute of the order.
    saga = serializers.SerializerMethodField()

    class Meta:
        ref_name = "OrderWithSaga"

    @extend_schema_field(SagaLinkSerializer)
    def get_saga(self, order: Order) -> dict[str, Any]:
        return SagaLinkSerializer(self.context["saga"]).data


# --- The same representation, built directly --------------------------------------------------
#
# The serializers above describe the API (the OpenAPI schema is generated from them); the
# views answer with ``order_data``, which builds the very same document without a serializer
# per object and per request (field copies, binding, one call per field): the order POST is
# the hottest request of the API. ``tests/api`` checks that the two agree field for field.

_CENT = Decimal("0.01")
_AMOUNT_CONTEXT = Context(prec=12)


def _amount(value: Decimal) -> str:
    # As DecimalField(max_digits=12, decimal_places=2) shows it: quantized, as a string.
    return f"{value.quantize(_CENT, context=_AMOUNT_CONTEXT):f}"


def _timestamp(value: datetime) -> str:
    # As DateTimeField shows it: ISO 8601 in the current time zone, UTC written as "Z".
    text = timezone.localtime(value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def saga_link_data(saga: SagaInstance) -> dict[str, Any]:
    """``SagaLinkSerializer(saga).data``."""
    return {
        "id": str(saga.pk),
        "definition": saga.definition,
        "status": str(saga.status),
        "url": reverse("api:saga-detail", kwargs={"saga_id": saga.pk}),
    }


def order_data(order: Order, *, saga: SagaInstance | None = None) -> dict[str, Any]:
    """``OrderSerializer(order).data``, or with ``saga``
    ``OrderWithSagaSerializer(order, context={"saga": saga}).data``."""
    data: dict[str, Any] = {
        "id": order.pk,
        "customer": order.customer_id,
        "status": str(order.status),
        "status_reason": order.status_reason,
        "currency": order.currency,
        "total": _amount(order.total),
        "points_used": order.points_used,
        "points_value": _amount(order.points_value),
        "amount_due": _amount(order.amount_due),
        "payment_method": order.payment_method,
        "created_at": _timestamp(order.created_at),
        "lines": [
            {
                "sku": line.sku,
                "name": line.name,
                "unit_price": _amount(line.unit_price),
                "quantity": line.quantity,
                "line_total": _amount(line.line_total),
            }
            for line in order.lines.all()
        ],
    }
    if saga is not None:
        data["saga"] = saga_link_data(saga)
    return data
