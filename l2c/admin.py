"""Admin pieces shared by the domain apps."""

import uuid

from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only services may write: editing them here would bypass the ledger rules."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def saga_link(key: str) -> str:
    """A link to the saga whose step wrote this row: its key is ``<saga id>:<step>...``.
    By URL name only, so the domain apps need not import the engine."""
    prefix = key.partition(":")[0]
    try:
        uuid.UUID(prefix)
        url = reverse("admin:sagas_sagainstance_change", args=[prefix])
    except (ValueError, NoReverseMatch):
        return "-"
    return format_html('<a href="{}">{}</a>', url, prefix[:8])
