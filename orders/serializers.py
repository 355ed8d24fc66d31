"""Serializers shared by the order APIs: a strict integer field and the order's output."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
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
