from django.contrib import admin

from l2c.admin import ReadOnlyAdmin
from orders.models import Customer, Order, OrderLine


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "email", "active", "credit_limit"]
    list_filter = ["active"]
    search_fields = ["name", "email"]


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    can_delete = False
    readonly_fields = ["sku", "name", "unit_price", "quantity", "line_total"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ["id", "customer", "status", "total", "amount_due", "points_used", "created_at"]
    list_filter = ["status", "payment_method"]
    search_fields = ["id", "request_key", "customer__email"]
    list_select_related = ["customer"]
    date_hierarchy = "created_at"
    inlines = [OrderLineInline]
