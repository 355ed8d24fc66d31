"""The order and customer APIs, mounted under /api/ (namespace ``api``) by l2c/urls.py."""

from django.urls import path

from orders.apis import CustomerDetailApi, OrderCancelApi, OrderCreateApi, OrderDetailApi

urlpatterns = [
    path("customers/<int:customer_id>/", CustomerDetailApi.as_view(), name="customer-detail"),
    path("orders/", OrderCreateApi.as_view(), name="order-create"),
    path("orders/<int:order_id>/", OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<int:order_id>/cancel/", OrderCancelApi.as_view(), name="order-cancel"),
]
