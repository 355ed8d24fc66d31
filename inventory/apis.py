"""The catalogue API: products with the stock still available to order."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inventory.selectors import product_list_available
from l2c.api import ErrorSerializer


class ProductListApi(APIView):
    class OutputSerializer(serializers.Serializer):
        sku = serializers.CharField()
        name = serializers.CharField()
        price = serializers.DecimalField(max_digits=12, decimal_places=2)
        available = serializers.IntegerField(help_text="On hand minus reserved.")

        class Meta:
            ref_name = "Product"

    @extend_schema(
        operation_id="product_list",
        tags=["products"],
        description="Active products with the stock still available to order.",
        responses={
            200: OutputSerializer(many=True),
            401: OpenApiResponse(ErrorSerializer),
            403: OpenApiResponse(ErrorSerializer),
        },
    )
    def get(self, request: Request) -> Response:
        # Served from the cache; every stock move drops it, so a reservation shows at once.
        return Response(self.OutputSerializer(product_list_available(), many=True).data)
