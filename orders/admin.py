from django.contrib import admin
from django.db.models import CharField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Cast, Concat
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from l2c.admin import ReadOnlyAdmin
from orders.models import Customer, Order, OrderLine
from sagas.models import SagaInstance


def _saga_url(saga_id) -> str:
    return reverse("admin:sagas_sagainstance_change", args=[saga_id])


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
    list_display = [
        "id",
        "customer",
        "status",
        "total",
        "amount_due",
        "points_used",
        "created_at",
        "saga",
    ]
    list_filter = ["status", "payment_method"]
    search_fields = ["id", "request_key", "customer__email"]
    list_select_related = ["customer"]
    date_hierarchy = "created_at"
    readonly_fields = ["sagas"]
    inlines = [OrderLineInline]

    def get_queryset(self, request) -> QuerySet:
        # The order's latest saga (placing it, or cancelling it) in the same query.
        latest = (
            SagaInstance.objects.filter(
                business_key=Concat(Value("order:"), Cast(OuterRef("pk"), CharField()))
            )
            .order_by("-created_at")
            .values("pk")[:1]
        )
        return super().get_queryset(request).annotate(latest_saga_id=Subquery(latest))

    @admin.display(description="saga")
    def saga(self, obj: Order) -> str:
        saga_id = getattr(obj, "latest_saga_id", None)
        if saga_id is None:
            return "-"
        return format_html('<a href="{}">{}</a>', _saga_url(saga_id), str(saga_id)[:8])

    @admin.display(description="sagas")
    def sagas(self, obj: Order) -> str:
        rows = SagaInstance.objects.filter(business_key=obj.business_key).order_by("created_at")
        if not rows:
            return "-"
        return format_html_join(
            mark_safe("<br>"),
            '<a href="{}">{} v{} {}</a> ({})',
            (
                (_saga_url(saga.pk), saga.definition, saga.version, saga.pk, saga.status)
                for saga in rows
            ),
        )
