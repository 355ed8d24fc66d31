"""Read-only views of payments: money only moves through the services, never by hand here."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from l2c.admin import ReadOnlyAdmin, saga_link
from payments.models import Payment, Refund


class RefundInline(admin.TabularInline):
    model = Refund
    extra = 0
    can_delete = False
    fields = ["key", "amount", "gateway_refund_id", "reason", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = [
        "key",
        "order_ref",
        "amount",
        "currency",
        "method",
        "status",
        "gateway_charge_id",
        "created_at",
        "saga",
    ]
    list_filter = ["status", "currency", "method"]
    search_fields = ["key", "order_ref", "gateway_charge_id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    readonly_fields = ["saga"]
    inlines = [RefundInline]

    @admin.display(description="saga")
    def saga(self, obj) -> str:
        return saga_link(obj.key)


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = [
        "key",
        "payment",
        "amount",
        "gateway_refund_id",
        "reason",
        "created_at",
        "saga",
    ]
    list_filter = ["payment__status"]
    search_fields = ["key", "payment__key", "payment__order_ref", "gateway_refund_id"]
    list_select_related = ["payment"]
    ordering = ["-created_at"]
    readonly_fields = ["saga"]

    @admin.display(description="saga")
    def saga(self, obj) -> str:
        return saga_link(obj.key)
