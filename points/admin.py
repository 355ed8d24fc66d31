from django.contrib import admin

from l2c.admin import ReadOnlyAdmin, saga_link
from points.models import PointsAccount, PointsEntry


@admin.register(PointsAccount)
class PointsAccountAdmin(ReadOnlyAdmin):
    list_display = ["customer", "balance", "updated_at"]
    list_select_related = ["customer"]
    search_fields = ["customer__email"]


@admin.register(PointsEntry)
class PointsEntryAdmin(ReadOnlyAdmin):
    list_display = ["key", "account", "kind", "amount", "created_at", "saga"]
    list_filter = ["kind"]
    search_fields = ["key"]
    list_select_related = ["account__customer"]
    readonly_fields = ["saga"]

    @admin.display(description="saga")
    def saga(self, obj) -> str:
        return saga_link(obj.key)
