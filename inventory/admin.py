from django.contrib import admin

from inventory.models import Product, Reservation, ReservationLine, Restock, Stock
from l2c.admin import ReadOnlyAdmin, saga_link


class StockInline(admin.StackedInline):
    model = Stock
    can_delete = False
    readonly_fields = ["on_hand", "reserved", "updated_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "price", "active", "on_hand", "reserved"]
    list_filter = ["active"]
    search_fields = ["sku", "name"]
    inlines = [StockInline]
    list_select_related = ["stock"]

    @admin.display(description="on hand")
    def on_hand(self, obj: Product) -> int:
        return obj.stock.on_hand

    @admin.display(description="reserved")
    def reserved(self, obj: Product) -> int:
        return obj.stock.reserved

    def get_readonly_fields(self, request, obj=None):
        # The sku is stored on order lines; renaming it would orphan their history.
        return ["sku"] if obj else []


@admin.register(Stock)
class StockAdmin(ReadOnlyAdmin):
    list_display = ["product", "on_hand", "reserved", "updated_at"]
    list_select_related = ["product"]
    search_fields = ["product__sku"]


class ReservationLineInline(admin.TabularInline):
    model = ReservationLine
    extra = 0
    can_delete = False
    readonly_fields = ["product", "quantity"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ["key", "status", "expires_at", "created_at", "saga"]
    list_filter = ["status"]
    search_fields = ["key"]
    date_hierarchy = "created_at"
    readonly_fields = ["saga"]
    inlines = [ReservationLineInline]

    @admin.display(description="saga")
    def saga(self, obj) -> str:
        return saga_link(obj.key)


@admin.register(Restock)
class RestockAdmin(ReadOnlyAdmin):
    list_display = ["key", "product", "quantity", "reason", "created_at", "saga"]
    list_select_related = ["product"]
    search_fields = ["key", "product__sku"]
    readonly_fields = ["saga"]

    @admin.display(description="saga")
    def saga(self, obj) -> str:
        return saga_link(obj.key)
