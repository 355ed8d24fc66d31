"""The operators' console: sagas are read-only here and change only through the operator
verbs of ``sagas.services`` (permissioned actions and buttons, each confirmed with a reason
and audited). The custom pages live in ``sagas.admin_views``."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from sagas import admin_views
from sagas.admin_views import STATUS_COLORS, VERBS, format_seconds, intervention_action
from sagas.models import (
    Intervention,
    OutboxMessage,
    SagaInstance,
    SagaStep,
    WebhookSubscription,
)
from sagas.outbox import outbox_requeue
from sagas.proxies import DeadLetterSaga, LongRunningSaga, StuckSaga
from sagas.registry import registry
from sagas.stats import stuck_filter


class RefuseForbiddenActionsMixin:
    """Django drops an action the user may not run from the list and answers a forced POST
    with "No action selected"; an operator console refuses it outright (403)."""

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if request.method == "POST" and "action" in request.POST:
            names = request.POST.getlist("action")
            try:
                name = names[int(request.POST.get("index", 0))]
            except (ValueError, IndexError):
                name = names[0]
            found = self.get_action(name) if name else None
            if found is not None:
                permissions = getattr(found[0], "allowed_permissions", ())
                if not all(getattr(self, f"has_{p}_permission")(request) for p in permissions):
                    raise PermissionDenied
        return super().changelist_view(request, extra_context)


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def status_badge_html(status: str, *, dead_letter: bool = False) -> str:
    badge = format_html(
        '<span class="saga-status" style="display:inline-block;padding:1px 7px;'
        "border-radius:9px;color:#fff;font-size:11px;font-weight:600;"
        'background:{}">{}</span>',
        STATUS_COLORS.get(status, "#555"),
        status,
    )
    if dead_letter:
        badge += mark_safe(
            ' <span class="saga-dlq" style="display:inline-block;padding:1px 6px;'
            "border-radius:9px;border:1px solid #c62828;color:#c62828;font-size:10px;"
            'font-weight:600">dead letter</span>'
        )
    return badge


# --- List filters -------------------------------------------------------------------------

AGES = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


class AgeFilter(admin.SimpleListFilter):
    field_name = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("1h", "Last hour"),
            ("24h", "Last day"),
            ("7d", "Last week"),
            ("30d", "Last 30 days"),
            ("older", "Older than a week"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        now = timezone.now()
        if value == "older":
            return queryset.filter(**{f"{self.field_name}__lt": now - AGES["7d"]})
        if value in AGES:
            return queryset.filter(**{f"{self.field_name}__gte": now - AGES[value]})
        return queryset


class CreatedFilter(AgeFilter):
    title = "created"
    parameter_name = "created"
    field_name = "created_at"


class UpdatedFilter(AgeFilter):
    title = "last update"
    parameter_name = "updated"
    field_name = "updated_at"


class DefinitionFilter(admin.SimpleListFilter):
    """Definitions from the registry: no query to list them."""

    title = "definition"
    parameter_name = "definition"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = sorted({saga.name for saga in registry.all()})
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(definition=self.value()) if self.value() else queryset


class VersionFilter(admin.SimpleListFilter):
    title = "version"
    parameter_name = "version"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        versions = sorted({saga.version for saga in registry.all()})
        return [(str(version), f"v{version}") for version in versions]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(version=int(value)) if value and value.isdigit() else queryset


class DeadLetterFilter(admin.SimpleListFilter):
    title = "dead letter"
    parameter_name = "dead_letter"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes (open)"), ("resolved", "Resolved"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == "yes":
            return queryset.filter(dead_lettered_at__isnull=False, resolved_at__isnull=True)
        if value == "resolved":
            return queryset.filter(dead_lettered_at__isnull=False, resolved_at__isnull=False)
        if value == "no":
            return queryset.filter(dead_lettered_at__isnull=True)
        return queryset


class StuckFilter(admin.SimpleListFilter):
    title = "stuck"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(stuck_filter())
        if self.value() == "no":
            return queryset.exclude(stuck_filter())
        return queryset


# --- Sagas --------------------------------------------------------------------------------


class SagaStepInline(ReadOnlyMixin, admin.TabularInline):
    model = SagaStep
    extra = 0
    can_delete = False
    ordering = ["index"]
    fields = [
        "index",
        "name",
        "status",
        "compensation_status",
        "attempts",
        "compensation_attempts",
        "duration",
        "started_at",
        "finished_at",
        "last_error",
    ]
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Steps are part of the saga: whoever may see the saga sees them.
        return request.user.has_perm("sagas.view_sagainstance")

    @admin.display(description="duration")
    def duration(self, obj: SagaStep) -> str:
        return format_seconds(None if obj.duration_ms is None else obj.duration_ms / 1000)

    @admin.display(description="last error")
    def last_error(self, obj: SagaStep) -> str:
        if not obj.error_message and not obj.error_code:
            return "-"
        summary = f"{obj.error_code}: {obj.error_message}" if obj.error_code else obj.error_message
        if not obj.error_traceback:
            return summary
        return format_html(
            '<details class="saga-traceback"><summary>{}</summary>'
            '<pre style="white-space:pre-wrap;max-width:70em;font-size:11px">{}</pre></details>',
            summary,
            obj.error_traceback,
        )


SUMMARY_FIELDS = [
    "id",
    "definition_link",
    "status_badge",
    "business_key_link",
    "correlation_id",
    "current_step",
    "priority",
    "tags",
    "runs",
    "recovery_attempts",
]
TIME_FIELDS = [
    "created_at",
    "updated_at",
    "completed_at",
    "deadline",
    "wake_at",
    "lease_owner",
    "lease_expires_at",
]
ERROR_FIELDS = ["error_code", "error_message"]
DEAD_LETTER_FIELDS = [
    "dead_lettered_at",
    "dead_letter_reason",
    "resolved_at",
    "resolved_by",
    "resolution",
]


class SagaAdminBase(RefuseForbiddenActionsMixin, ReadOnlyMixin, admin.ModelAdmin):
    """The saga list and page, shared by ``SagaInstance`` and its ready-made lists."""

    list_display = [
        "short_id",
        "status_badge",
        "definition_version",
        "business_key",
        "current_step",
        "runs",
        "updated_at",
    ]
    list_display_links = ["short_id"]
    list_filter = [
        "status",
        DefinitionFilter,
        VersionFilter,
        CreatedFilter,
        UpdatedFilter,
        DeadLetterFilter,
        StuckFilter,
    ]
    search_fields = ["business_key", "correlation_id"]
    search_help_text = "An exact saga id, business key (order:42) or correlation id."
    list_per_page = 50
    fieldsets = [
        (None, {"fields": SUMMARY_FIELDS}),
        ("Times and lease", {"fields": TIME_FIELDS}),
        ("Last error", {"fields": ERROR_FIELDS}),
        ("Dead letter", {"fields": DEAD_LETTER_FIELDS, "classes": ["collapse"]}),
        ("Context", {"fields": ["context_pretty"]}),
    ]
    readonly_fields = [
        *SUMMARY_FIELDS,
        *TIME_FIELDS,
        *ERROR_FIELDS,
        *DEAD_LETTER_FIELDS,
        "context_pretty",
    ]
    inlines = [SagaStepInline]
    actions = [
        "retry_now",
        "resume",
        "compensate",
        "skip_step",
        "cancel",
        "dead_letter_retry",
        "dead_letter_resolve",
    ]
    change_list_template = "admin/sagas/sagainstance/change_list.html"
    change_form_template = "admin/sagas/sagainstance/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The list shows none of the large columns.
        return (
            super()
            .get_queryset(request)
            .defer("context", "tags", "error_message", "dead_letter_reason", "resolution")
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Exact matches, which the indexes answer: an id, a business key, a correlation id."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            pass
        by_key = queryset.filter(business_key=term)
        return by_key | queryset.filter(correlation_id=term), False

    # -- columns and fields --

    @admin.display(description="saga", ordering="id")
    def short_id(self, obj: SagaInstance) -> str:
        return format_html('<span title="{}">{}</span>', obj.pk, str(obj.pk)[:8])

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: SagaInstance) -> str:
        return status_badge_html(
            obj.status,
            dead_letter=obj.dead_lettered_at is not None and obj.resolved_at is None,
        )

    @admin.display(description="definition", ordering="definition")
    def definition_version(self, obj: SagaInstance) -> str:
        return f"{obj.definition} v{obj.version}"

    @admin.display(description="definition")
    def definition_link(self, obj: SagaInstance) -> str:
        url = reverse(
            "admin:sagas_definition", kwargs={"name": obj.definition, "version": obj.version}
        )
        return format_html('<a href="{}">{} v{}</a>', url, obj.definition, obj.version)

    @admin.display(description="business key")
    def business_key_link(self, obj: SagaInstance) -> str:
        key = obj.business_key
        order_id = key.partition(":")[2] if key.startswith("order:") else ""
        if order_id.isdigit():
            try:
                url = reverse("admin:orders_order_change", args=[int(order_id)])
            except NoReverseMatch:
                return key
            return format_html('<a href="{}">{}</a>', url, key)
        return key or "-"

    @admin.display(description="context")
    def context_pretty(self, obj: SagaInstance) -> str:
        text = json.dumps(obj.context, indent=2, sort_keys=True, cls=DjangoJSONEncoder)
        return format_html(
            '<pre class="saga-context" style="margin:0;white-space:pre-wrap">{}</pre>', text
        )

    # -- pages --

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list:
        # The dead-letter section is folded away unless the saga waits in the queue.
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or not obj.dead_lettered_at or obj.resolved_at:
            return fieldsets
        return [
            (name, {**options, "classes": []} if name == "Dead letter" else options)
            for name, options in fieldsets
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(admin_views.saga_page_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        extra = {
            "dashboard_url": reverse("admin:sagas_dashboard"),
            "definitions_url": reverse("admin:sagas_definitions"),
        }
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    # -- interventions: each an action behind its own permission --

    def _has_saga_permission(self, request: HttpRequest, codename: str) -> bool:
        # Always the SagaInstance permission, also in the ready-made lists (proxies).
        return request.user.has_perm(f"sagas.{codename}")

    def has_retry_saga_permission(self, request: HttpRequest) -> bool:
        return self._has_saga_permission(request, "retry_saga")

    def has_resume_saga_permission(self, request: HttpRequest) -> bool:
        return self._has_saga_permission(request, "resume_saga")

    def has_compensate_saga_permission(self, request: HttpRequest) -> bool:
        return self._has_saga_permission(request, "compensate_saga")

    def has_skip_step_permission(self, request: HttpRequest) -> bool:
        return self._has_saga_permission(request, "skip_step")

    def has_cancel_saga_permission(self, request: HttpRequest) -> bool:
        return self._has_saga_permission(request, "cancel_saga")

    def has_resolve_dead_letter_permission(self, request: HttpRequest) -> bool:
        return self._has_saga_permission(request, "resolve_dead_letter")

    @admin.action(permissions=["retry_saga"], description="Retry now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return intervention_action(self, request, queryset, VERBS["retry_now"])

    @admin.action(permissions=["resume_saga"], description="Resume (out of the dead-letter queue)")
    def resume(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return intervention_action(self, request, queryset, VERBS["resume"])

    @admin.action(permissions=["compensate_saga"], description="Force compensation")
    def compensate(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return intervention_action(self, request, queryset, VERBS["compensate"])

    @admin.action(permissions=["skip_step"], description="Skip a step")
    def skip_step(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return intervention_action(self, request, queryset, VERBS["skip_step"])

    @admin.action(permissions=["cancel_saga"], description="Cancel")
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return intervention_action(self, request, queryset, VERBS["cancel"])

    @admin.action(permissions=["resolve_dead_letter"], description="Resolve dead letter: retry")
    def dead_letter_retry(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return intervention_action(self, request, queryset, VERBS["dead_letter_retry"])

    @admin.action(
        permissions=["resolve_dead_letter"], description="Resolve dead letter: mark resolved"
    )
    def dead_letter_resolve(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return intervention_action(self, request, queryset, VERBS["dead_letter_resolve"])


@admin.register(SagaInstance)
class SagaInstanceAdmin(SagaAdminBase):
    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("dashboard/", wrap(self.dashboard_view), name="sagas_dashboard"),
            path("definitions/", wrap(self.definitions_view), name="sagas_definitions"),
            path(
                "definitions/<str:name>/<int:version>/",
                wrap(self.definition_view),
                name="sagas_definition",
            ),
            path(
                "<path:object_id>/intervene/<slug:verb>/",
                wrap(self.intervene_view),
                name="sagas_sagainstance_intervene",
            ),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.dashboard_view(self, request)

    def definitions_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.definitions_view(self, request)

    def definition_view(self, request: HttpRequest, name: str, version: int) -> HttpResponse:
        return admin_views.definition_view(self, request, name, version)

    def intervene_view(self, request: HttpRequest, object_id: str, verb: str) -> HttpResponse:
        return admin_views.intervene_view(self, request, object_id, verb)


class SagaListAdmin(SagaAdminBase):
    """A ready-made list: visible to whoever may see sagas at all."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or request.user.has_perm(
            "sagas.view_sagainstance"
        )


@admin.register(StuckSaga)
class StuckSagaAdmin(SagaListAdmin):
    pass


@admin.register(LongRunningSaga)
class LongRunningSagaAdmin(SagaListAdmin):
    pass


@admin.register(DeadLetterSaga)
class DeadLetterSagaAdmin(SagaListAdmin):
    list_display = [
        "short_id",
        "status_badge",
        "definition_version",
        "business_key",
        "dead_lettered_at",
        "dead_letter_reason_short",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer(None).defer("context", "tags")

    @admin.display(description="why")
    def dead_letter_reason_short(self, obj: SagaInstance) -> str:
        reason = obj.dead_letter_reason
        return reason if len(reason) <= 120 else reason[:119] + "…"


# --- Audit, outbox, webhooks --------------------------------------------------------------


@admin.register(Intervention)
class InterventionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "saga_link",
        "action",
        "step",
        "actor_name",
        "status_change",
        "effective",
        "reason_short",
    ]
    list_filter = ["action", "effective"]
    search_fields = ["actor_name", "reason"]
    search_help_text = "An exact saga id, or words of the actor's name or the reason."
    date_hierarchy = "created_at"
    fields = [
        "created_at",
        "saga_link",
        "action",
        "step",
        "actor_name",
        "actor",
        "reason",
        "status_before",
        "status_after",
        "effective",
    ]
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The audit log is part of the saga console.
        return super().has_view_permission(request, obj) or request.user.has_perm(
            "sagas.view_sagainstance"
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        try:
            return queryset.filter(saga_id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    @admin.display(description="saga", ordering="saga_id")
    def saga_link(self, obj: Intervention) -> str:
        url = reverse("admin:sagas_sagainstance_change", args=[obj.saga_id])
        return format_html('<a href="{}">{}</a>', url, str(obj.saga_id)[:8])

    @admin.display(description="status")
    def status_change(self, obj: Intervention) -> str:
        return f"{obj.status_before} → {obj.status_after}"

    @admin.display(description="reason")
    def reason_short(self, obj: Intervention) -> str:
        return obj.reason if len(obj.reason) <= 100 else obj.reason[:99] + "…"


@admin.register(OutboxMessage)
class OutboxMessageAdmin(RefuseForbiddenActionsMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "topic", "key", "status", "attempts", "next_attempt_at", "created_at"]
    list_filter = ["status", "topic"]
    search_fields = ["=key", "=topic"]
    readonly_fields = [
        "id",
        "topic",
        "key",
        "dedup_key",
        "status",
        "attempts",
        "next_attempt_at",
        "created_at",
        "sent_at",
        "last_error",
        "payload_pretty",
    ]
    fields = readonly_fields
    actions = ["requeue"]

    @admin.display(description="payload")
    def payload_pretty(self, obj: OutboxMessage) -> str:
        text = json.dumps(obj.payload, indent=2, sort_keys=True)
        return format_html('<pre style="margin:0;white-space:pre-wrap">{}</pre>', text)

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        # Read-only rows: the change permission only gates this action.
        return request.user.has_perm("sagas.change_outboxmessage")

    @admin.action(permissions=["requeue"], description="Requeue failed messages")
    def requeue(self, request: HttpRequest, queryset: QuerySet) -> None:
        requeued = skipped = 0
        for message in queryset.only("pk", "status", "topic"):
            if outbox_requeue(message_id=message.pk):
                requeued += 1
                self.log_change(request, message, "Requeued for a fresh set of attempts.")
            else:
                skipped += 1
        if requeued:
            self.message_user(request, f"{requeued} message(s) requeued.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} message(s) left alone: only FAILED messages are requeued.",
                messages.WARNING,
            )


class WebhookSubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")

    class Meta:
        model = WebhookSubscription
        fields = ["name", "url", "secret", "topics", "active"]
        widgets = {"secret": forms.PasswordInput(render_value=True)}


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    """Configuration, hence editable."""

    form = WebhookSubscriptionForm
    list_display = ["name", "url", "topic_list", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["name", "url"]

    @admin.display(description="topics")
    def topic_list(self, obj: WebhookSubscription) -> str:
        if not obj.topics:
            return "all topics"
        return format_html_join(", ", "<code>{}</code>", ((topic,) for topic in obj.topics))
