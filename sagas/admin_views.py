"""The custom pages of the saga console, wired up by ``sagas/admin.py``.

- Operator interventions: one ``Verb`` per service call, a confirmation form that requires a
  reason, and ``perform_interventions`` shared by the admin actions and the buttons of a
  saga's page. The services do the compare-and-set and write the ``Intervention`` row and the
  ``operator_action`` event; this module adds Django's ``LogEntry`` in the same transaction.
- The timeline of one saga (a bar per step attempt and per compensation) and the links to the
  business rows it touched.
- The dashboard (statistics and health of seed 000, sagas per minute by outcome) and the
  diagram of each saga definition.

Pictures are inline SVG computed here: no JavaScript, nothing loaded from elsewhere.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.apps import apps
from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q
from django.db.models.functions import TruncHour, TruncMinute
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from sagas.deadletters import dead_letter_resolve, dead_letter_retry
from sagas.definitions import Retry, Saga
from sagas.exceptions import InvalidIntervention, SagaBusy
from sagas.models import Intervention, SagaEvent, SagaInstance, SagaStep
from sagas.registry import SagaNotRegistered, registry
from sagas.services import (
    saga_cancel,
    saga_compensate,
    saga_resume,
    saga_retry_now,
    saga_skip_step,
)
from sagas.stats import long_running_filter, saga_health, saga_statistics, stuck_filter

Status = SagaInstance.Status
Kind = SagaEvent.Kind

# An intervention acts saga by saga; more than this at once is more likely a mistake.
MAX_BATCH = 100

STATUS_COLORS = {
    Status.STARTED: "#546e7a",
    Status.EXECUTING: "#1565c0",
    Status.COMPLETED: "#2e7d32",
    Status.COMPENSATING: "#ffa000",
    Status.COMPENSATED: "#ef6c00",
    Status.FAILED: "#c62828",
    Status.TIMEOUT: "#6a1b9a",
}


def saga_change_url(saga_id: object) -> str:
    return reverse("admin:sagas_sagainstance_change", args=[saga_id])


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s"
    if value < 3600:
        minutes, seconds = divmod(value, 60)
        return f"{int(minutes)} min {seconds:.0f} s"
    hours, rest = divmod(value, 3600)
    return f"{int(hours)} h {rest / 60:.0f} min"


def format_rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


# --- Interventions ------------------------------------------------------------------------


def _active(saga: SagaInstance) -> bool:
    return saga.status in SagaInstance.ACTIVE


def _going_forward(saga: SagaInstance) -> bool:
    return saga.status in (Status.STARTED, Status.EXECUTING)


def _open_dead_letter(saga: SagaInstance) -> bool:
    return saga.dead_lettered_at is not None and saga.resolved_at is None


@dataclass(frozen=True)
class Verb:
    """One operator action: the service it calls and the permission it needs."""

    name: str
    label: str
    permission: str
    run: Callable[..., Intervention]
    # Whether the saga page offers the button; the service has the final word.
    applies: Callable[[SagaInstance], bool]
    explanation: str
    needs_step: bool = False

    @property
    def perm(self) -> str:
        return f"sagas.{self.permission}"


def _skip(*, saga_id: object, actor: Any, reason: str, step: str) -> Intervention:
    return saga_skip_step(saga_id=saga_id, step=step, actor=actor, reason=reason)


VERBS: dict[str, Verb] = {
    verb.name: verb
    for verb in (
        Verb(
            "retry_now",
            "Retry now",
            "retry_saga",
            saga_retry_now,
            _active,
            "Hands the saga to a worker at once instead of waiting for its next retry.",
        ),
        Verb(
            "resume",
            "Resume",
            "resume_saga",
            saga_resume,
            lambda saga: saga.status == Status.FAILED,
            "Takes a failed saga out of the dead-letter queue: an exhausted compensation "
            "starts again, a step after the pivot is retried forward.",
        ),
        Verb(
            "compensate",
            "Force compensation",
            "compensate_saga",
            saga_compensate,
            _going_forward,
            "Undoes what the saga did so far. Refused once the saga passed its pivot.",
        ),
        Verb(
            "skip_step",
            "Skip a step",
            "skip_step",
            _skip,
            lambda saga: _going_forward(saga) or saga.status == Status.FAILED,
            "Marks a step that has not completed as skipped and carries on after it; a "
            "skipped step is never compensated.",
            needs_step=True,
        ),
        Verb(
            "cancel",
            "Cancel",
            "cancel_saga",
            saga_cancel,
            _going_forward,
            "Cancels an unfinished saga: what it did is compensated.",
        ),
        Verb(
            "dead_letter_retry",
            "Retry dead letter",
            "resolve_dead_letter",
            dead_letter_retry,
            _open_dead_letter,
            "Resolves the dead letter by retrying: the saga leaves the queue and carries on "
            "(its compensation, or its steps after the pivot).",
        ),
        Verb(
            "dead_letter_resolve",
            "Mark dead letter resolved",
            "resolve_dead_letter",
            dead_letter_resolve,
            _open_dead_letter,
            "Closes the dead letter without retrying: the problem was handled outside the "
            "system. The saga keeps its status.",
        ),
    )
}


class InterventionForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 70}),
        max_length=2000,
        help_text="Why: kept in the saga's history and the audit log.",
    )

    def __init__(
        self, *args: Any, steps: list[tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if steps is not None:
            pending = [name for name, label in steps if label == name]
            self.fields = {
                "step": forms.ChoiceField(
                    choices=steps,
                    initial=pending[0] if pending else None,
                    help_text="The step to mark as skipped.",
                ),
                **self.fields,
            }


def step_choices(sagas: Iterable[SagaInstance]) -> list[tuple[str, str]]:
    """The steps of the sagas' definitions, those already completed or skipped labelled so
    (choosing one is allowed: the service records it as not effective)."""
    sagas = list(sagas)
    done = dict(
        (name, status.lower())
        for name, status in SagaStep.objects.filter(
            saga__in=sagas, status__in=[SagaStep.Status.COMPLETED, SagaStep.Status.SKIPPED]
        ).values_list("name", "status")
    )
    names: list[str] = []
    for saga in sagas:
        try:
            steps = [step.name for step in registry.get(saga.definition, saga.version).steps]
        except SagaNotRegistered:
            steps = list(
                SagaStep.objects.filter(saga=saga).order_by("index").values_list("name", flat=True)
            )
        names.extend(name for name in steps if name not in names)
    return [(name, f"{name} ({done[name]})" if name in done else name) for name in names]


def _log_message(verb: Verb, intervention: Intervention) -> str:
    step = f" step {intervention.step}" if intervention.step else ""
    effect = "" if intervention.effective else ", no effect"
    return (
        f"{verb.label}{step}: {intervention.reason} "
        f"[{intervention.status_before} -> {intervention.status_after}{effect}]"
    )


def perform_interventions(
    model_admin: Any,
    request: HttpRequest,
    verb: Verb,
    sagas: list[SagaInstance],
    *,
    reason: str,
    step: str = "",
) -> list[Intervention]:
    """Call the verb's service for each saga and report the outcome with messages.

    Each saga gets its own transaction: the service's audit rows and Django's LogEntry commit
    together, and a refused saga (busy, wrong state) does not undo the others.
    """
    done: list[Intervention] = []
    for saga in sagas:
        arguments: dict[str, Any] = {"saga_id": saga.pk, "actor": request.user, "reason": reason}
        if verb.needs_step:
            arguments["step"] = step
        try:
            with transaction.atomic():
                intervention = verb.run(**arguments)
                model_admin.log_change(request, saga, _log_message(verb, intervention))
        except (SagaBusy, InvalidIntervention) as error:
            model_admin.message_user(
                request, f"{verb.label} refused for saga {saga.pk}: {error}", messages.ERROR
            )
            continue
        except SagaInstance.DoesNotExist:
            model_admin.message_user(request, f"Saga {saga.pk} no longer exists.", messages.ERROR)
            continue
        done.append(intervention)
        if intervention.effective:
            model_admin.message_user(
                request,
                f"{verb.label}: saga {saga.pk} "
                f"({intervention.status_before} -> {intervention.status_after}).",
                messages.SUCCESS,
            )
        else:
            model_admin.message_user(
                request,
                f"No effect on saga {saga.pk}: already done by someone else, or no longer "
                f"possible in its state ({intervention.status_after}). Recorded in the audit "
                "log as not effective.",
                messages.WARNING,
            )
    return done


def _confirmation(
    request: HttpRequest,
    model_admin: Any,
    verb: Verb,
    sagas: list[SagaInstance],
    form: InterventionForm,
    *,
    action: bool,
) -> TemplateResponse:
    opts = SagaInstance._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{verb.label}: are you sure?",
        "subtitle": None,
        "opts": opts,
        "app_label": opts.app_label,
        "verb": verb,
        "sagas": sagas,
        "form": form,
        "is_action": action,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "changelist_url": reverse(
            f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_changelist"
        ),
        "media": model_admin.media,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/sagas/confirm_intervention.html", context)


def intervention_action(
    model_admin: Any, request: HttpRequest, queryset: Any, verb: Verb
) -> HttpResponse | None:
    """An admin action in two POSTs, like ``delete_selected``: the first shows the
    confirmation page, the second (``post=yes`` and a valid form) acts."""
    if not request.user.has_perm(verb.perm):
        raise PermissionDenied
    sagas = list(
        SagaInstance.objects.filter(pk__in=queryset.values("pk")).order_by("-created_at")[
            : MAX_BATCH + 1
        ]
    )
    if len(sagas) > MAX_BATCH:
        model_admin.message_user(
            request,
            f"Select at most {MAX_BATCH} sagas for one intervention. Nothing was changed.",
            messages.ERROR,
        )
        return None
    steps = step_choices(sagas) if verb.needs_step else None
    if request.POST.get("post") == "yes":
        form = InterventionForm(request.POST, steps=steps)
        if form.is_valid():
            perform_interventions(
                model_admin,
                request,
                verb,
                sagas,
                reason=form.cleaned_data["reason"],
                step=form.cleaned_data.get("step", ""),
            )
            return None
    else:
        form = InterventionForm(steps=steps)
    return _confirmation(request, model_admin, verb, sagas, form, action=True)


def intervene_view(
    model_admin: Any, request: HttpRequest, object_id: str, verb_name: str
) -> HttpResponse:
    """The confirmation page behind a button of a saga's page: GET shows it, POST acts."""
    verb = VERBS.get(verb_name)
    if verb is None:
        raise Http404(f"no intervention {verb_name!r}")
    saga = model_admin.get_object(request, unquote(object_id))
    if not model_admin.has_view_permission(request, saga) or not request.user.has_perm(verb.perm):
        raise PermissionDenied
    if saga is None:
        raise Http404("no such saga")
    steps = step_choices([saga]) if verb.needs_step else None
    form = InterventionForm(request.POST or None, steps=steps)
    if request.method == "POST" and form.is_valid():
        perform_interventions(
            model_admin,
            request,
            verb,
            [saga],
            reason=form.cleaned_data["reason"],
            step=form.cleaned_data.get("step", ""),
        )
        return HttpResponseRedirect(saga_change_url(saga.pk))
    return _confirmation(request, model_admin, verb, [saga], form, action=False)


def intervention_buttons(request: HttpRequest, saga: SagaInstance) -> list[dict[str, str]]:
    """The buttons a saga's page shows: the user's permitted verbs that fit its state."""
    return [
        {
            "label": verb.label,
            "name": verb.name,
            "url": reverse("admin:sagas_sagainstance_intervene", args=[saga.pk, verb.name]),
        }
        for verb in VERBS.values()
        if request.user.has_perm(verb.perm) and verb.applies(saga)
    ]


# --- One saga: linked rows, timeline ------------------------------------------------------


def _admin_change_url(model: Any, pk: object) -> str | None:
    try:
        return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[pk])
    except NoReverseMatch:
        return None


def related_records(saga: SagaInstance, *, limit: int = 20) -> list[dict[str, Any]]:
    """Business rows the saga touched, each with its admin link, found by the keys the
    engine hands to steps (``<saga id>:<step>``) and by the business key ``order:<id>``.
    Apps that are not installed or not in the admin are left out."""
    prefix = f"{saga.pk}:"
    order_ref = saga.business_key if saga.business_key.startswith("order:") else ""
    order_id = order_ref.partition(":")[2]
    lookups: list[tuple[str, str, Q | None]] = [
        ("orders", "Order", Q(pk=int(order_id)) if order_id.isdigit() else None),
        (
            "payments",
            "Payment",
            Q(key__startswith=prefix) | (Q(order_ref=order_ref) if order_ref else Q()),
        ),
        ("payments", "Refund", Q(key__startswith=prefix)),
        ("inventory", "Reservation", Q(key__startswith=prefix)),
        ("inventory", "Restock", Q(key__startswith=prefix)),
        ("points", "PointsEntry", Q(key__startswith=prefix)),
    ]
    found: list[dict[str, Any]] = []
    for app_label, model_name, condition in lookups:
        if condition is None:
            continue
        try:
            model = apps.get_model(app_label, model_name)
        except LookupError:
            continue
        rows = list(model._default_manager.filter(condition).order_by("pk")[:limit])
        for row in rows:
            found.append(
                {
                    "kind": model._meta.verbose_name,
                    "text": str(row),
                    "url": _admin_change_url(model, row.pk),
                }
            )
    return found


TIMELINE_COLORS = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "running": "#1565c0",
    "unfinished": "#90a4ae",
    "compensated": "#ef6c00",
    "compensation_failed": "#8e0000",
    "empty": "#9e9e9e",
    "skipped": "#6d4c41",
}
MARKER_LABELS = {
    Kind.STARTED: "saga started",
    Kind.COMPENSATION_STARTED: "compensation started",
    Kind.TIMED_OUT: "timed out",
    Kind.FAILED: "saga failed",
    Kind.DEAD_LETTERED: "dead-lettered",
    Kind.OPERATOR: "operator action",
    Kind.COMPLETED: "saga completed",
    Kind.COMPENSATED: "saga compensated",
    Kind.RECOVERED: "recovered",
    Kind.LATE_ACTION_REFUSED: "late action refused",
    Kind.RETRY_SCHEDULED: "retry scheduled",
}
MARKER_COLORS = {
    Kind.OPERATOR: "#6a1b9a",
    Kind.DEAD_LETTERED: "#c62828",
    Kind.FAILED: "#c62828",
    Kind.TIMED_OUT: "#6a1b9a",
    Kind.COMPLETED: "#2e7d32",
    Kind.COMPENSATED: "#ef6c00",
    Kind.COMPENSATION_STARTED: "#ef6c00",
}


@dataclass
class _Bar:
    label: str
    outcome: str
    start: datetime
    end: datetime
    title: str


@dataclass
class Timeline:
    width: int
    height: int
    label_width: int
    bars: list[dict[str, Any]] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)
    ticks: list[dict[str, Any]] = field(default_factory=list)
    breaks: list[dict[str, Any]] = field(default_factory=list)
    legend: list[dict[str, str]] = field(default_factory=list)
    truncated: int = 0


def _ms(detail: dict[str, Any]) -> float | None:
    value = detail.get("duration_ms") if isinstance(detail, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _offset(seconds: float, digits: int = 1) -> str:
    if seconds < 1:
        return f"+{seconds * 1000:.{max(digits - 1, 0)}f} ms"
    if seconds < 120:
        return f"+{seconds:.{digits}f} s"
    if seconds < 7200:
        return f"+{seconds / 60:.{digits}f} min"
    return f"+{seconds / 3600:.{digits}f} h"


class _TimeScale:
    """Maps moments to x. A long idle stretch (waiting for a delayed retry, for an operator)
    would squeeze everything else into a few pixels, so each one that takes more than 40 %
    of what is left is drawn as a fixed-width break instead."""

    BREAK_PX = 44.0

    def __init__(self, moments: list[datetime]) -> None:
        self.points = sorted(set(moments))
        self.start = self.points[0]
        self.gaps = [
            (later - earlier).total_seconds() for earlier, later in itertools.pairwise(self.points)
        ]
        self.cut: set[int] = set()
        while len(self.cut) < 8:
            open_gaps = [(gap, i) for i, gap in enumerate(self.gaps) if i not in self.cut]
            if not open_gaps:
                break
            total = sum(gap for gap, _ in open_gaps)
            gap, index = max(open_gaps)
            if gap < 0.5 or gap <= 0.4 * total or total - gap <= 0:
                break
            self.cut.add(index)
        self.xs: list[float] = []

    def fit(self, left: float, width: float) -> None:
        real = sum(gap for i, gap in enumerate(self.gaps) if i not in self.cut)
        free = width - self.BREAK_PX * len(self.cut)
        per_second = free / real if real > 0 else 0.0
        self.xs = [left]
        for i, gap in enumerate(self.gaps):
            self.xs.append(self.xs[-1] + (self.BREAK_PX if i in self.cut else gap * per_second))

    def x(self, moment: datetime) -> float:
        index = bisect.bisect_right(self.points, moment) - 1
        if index < 0:
            return round(self.xs[0], 1)
        if index >= len(self.gaps):
            return round(self.xs[-1], 1)
        gap = self.gaps[index]
        fraction = (moment - self.points[index]).total_seconds() / gap if gap else 0.0
        return round(self.xs[index] + fraction * (self.xs[index + 1] - self.xs[index]), 1)

    def time_at(self, x: float) -> datetime | None:
        """The moment drawn at ``x``; None inside a break."""
        for i, gap in enumerate(self.gaps):
            left, right = self.xs[i], self.xs[i + 1]
            if left <= x <= right + 0.01:
                if i in self.cut:
                    return None
                fraction = (x - left) / (right - left) if right > left else 0.0
                return self.points[i] + timedelta(seconds=gap * fraction)
        if not self.gaps:
            return self.start if x <= self.xs[0] + 0.01 else None
        return None

    def breaks(self) -> list[tuple[float, float, float]]:
        return [(self.xs[i], self.xs[i + 1], self.gaps[i]) for i in sorted(self.cut)]


def saga_timeline(
    saga: SagaInstance,
    events: list[SagaEvent],
    *,
    now: datetime | None = None,
    max_bars: int = 150,
) -> Timeline:
    """Lay out the saga's history as bars: one per step attempt (from its ``step_started`` to
    its ``step_completed``/``step_failed`` event) and one per compensation attempt (which
    ends at its event; it starts ``duration_ms`` earlier, or after the previous event). Other
    events become markers."""
    moment = now or timezone.now()
    bars: list[_Bar] = []
    markers: list[tuple[datetime, SagaEvent]] = []
    opened: dict[tuple[str, int | None], datetime] = {}
    previous = saga.created_at
    ready: dict[str, datetime] = {}
    for event in events:
        at = event.created_at
        kind = event.kind
        key = (event.step, event.attempt)
        if kind == Kind.STEP_STARTED:
            opened.setdefault(key, at)
        elif kind in (Kind.STEP_COMPLETED, Kind.STEP_FAILED):
            start = opened.pop(key, None)
            if start is None:
                duration = _ms(event.detail)
                start = at - timedelta(milliseconds=duration) if duration is not None else previous
            outcome = "completed" if kind == Kind.STEP_COMPLETED else "failed"
            title = f"{event.step} attempt {event.attempt}: {outcome}"
            if event.reason:
                title += f" ({event.reason[:200]})"
            bars.append(_Bar(f"{event.step} #{event.attempt}", outcome, start, at, title))
        elif kind in (Kind.STEP_COMPENSATED, Kind.COMPENSATION_FAILED, Kind.COMPENSATION_EMPTY):
            duration = _ms(event.detail)
            if kind == Kind.COMPENSATION_EMPTY:
                start = at  # recorded, not run: a point in time
            elif duration is not None:
                start = at - timedelta(milliseconds=duration)
            else:
                start = max(previous, ready.get(event.step, previous))
            outcome = {
                Kind.STEP_COMPENSATED: "compensated",
                Kind.COMPENSATION_FAILED: "compensation_failed",
                Kind.COMPENSATION_EMPTY: "empty",
            }[kind]
            attempt = f" #{event.attempt}" if event.attempt else ""
            title = f"compensation of {event.step}{attempt}: {outcome.replace('_', ' ')}"
            if event.reason:
                title += f" ({event.reason[:200]})"
            bars.append(_Bar(f"undo {event.step}{attempt}", outcome, start, at, title))
        elif kind == Kind.STEP_SKIPPED:
            title = f"{event.step} skipped by {event.actor or 'an operator'}: {event.reason}"
            bars.append(_Bar(f"{event.step} skipped", "skipped", at, at, title))
        else:
            if kind == Kind.RETRY_SCHEDULED and isinstance(event.detail, dict):
                delay = event.detail.get("delay_seconds") or 0
                ready[event.step] = at + timedelta(seconds=float(delay))
            markers.append((at, event))
        previous = max(previous, at)
    still_open = saga.status in SagaInstance.ACTIVE
    for (step, attempt), start in opened.items():
        end = moment if still_open else previous
        outcome = "running" if still_open else "unfinished"
        label = f"{step} #{attempt}"
        bars.append(_Bar(label, outcome, start, end, f"{label}: {outcome}"))
    bars.sort(key=lambda bar: bar.start)
    truncated = max(0, len(bars) - max_bars)
    bars = bars[:max_bars]

    label_width, plot_width, row, top = 190, 760, 22, 46
    moments = [saga.created_at, previous, *(at for at, _ in markers)]
    scale = _TimeScale([*moments, *(b.start for b in bars), *(b.end for b in bars)])
    scale.fit(label_width, plot_width)
    timeline = Timeline(
        width=label_width + plot_width + 20,
        height=top + row * max(len(bars), 1) + 12,
        label_width=label_width,
        truncated=truncated,
    )
    bottom = timeline.height - 8
    for index, bar in enumerate(bars):
        left = scale.x(bar.start)
        width = max(round(scale.x(bar.end) - left, 1), 2.0)
        seconds = (bar.end - bar.start).total_seconds()
        timeline.bars.append(
            {
                "label": bar.label,
                "x": left,
                "y": top + index * row + 3,
                "text_y": top + index * row + 14,
                "width": width,
                "color": TIMELINE_COLORS[bar.outcome],
                "outcome": bar.outcome,
                "title": f"{bar.title}, {format_seconds(seconds)}",
            }
        )
    for at, event in markers:
        label = MARKER_LABELS.get(event.kind, event.kind)
        if event.kind == Kind.OPERATOR:
            action = event.detail.get("action", "") if isinstance(event.detail, dict) else ""
            label = f"operator {action} by {event.actor}: {event.reason}"
        elif event.reason:
            label = f"{label}: {event.reason[:200]}"
        timeline.markers.append(
            {
                "x": scale.x(at),
                "color": MARKER_COLORS.get(event.kind, "#78909c"),
                "title": f"{at:%H:%M:%S.%f}"[:-3] + f" {label}",
                "line_bottom": bottom,
            }
        )
    timeline.breaks = [
        {
            "x": round(left, 1),
            "right": round(right, 1),
            "width": round(right - left, 1),
            "mid": round((left + right) / 2, 1),
            "label": format_seconds(seconds),
            "bottom": bottom,
        }
        for left, right, seconds in scale.breaks()
    ]
    offsets = []
    for i in range(6):
        at_x = label_width + i / 5 * plot_width
        at = scale.time_at(at_x)
        near_break = any(abs(at_x - gap["mid"]) < 60 for gap in timeline.breaks)
        if at is not None and not near_break:
            offsets.append((i, at_x, (at - scale.start).total_seconds()))
    # As many digits as it takes for neighbouring ticks to read differently.
    for digits in (1, 2, 3):
        labels = [_offset(offset, digits) for _, _, offset in offsets]
        if len(set(labels)) == len(labels):
            break
    timeline.ticks = [
        {
            "x": round(at_x, 1),
            "label": label,
            "bottom": bottom,
            "anchor": "end" if i == 5 else "middle",
        }
        for (i, at_x, _), label in zip(offsets, labels, strict=True)
    ]
    timeline.legend = [
        {"label": name.replace("_", " "), "color": color}
        for name, color in TIMELINE_COLORS.items()
        if any(bar.outcome == name for bar in bars)
    ]
    return timeline


def saga_page_context(request: HttpRequest, saga: SagaInstance) -> dict[str, Any]:
    """What a saga's page shows below its fields."""
    events = list(SagaEvent.objects.filter(saga_id=saga.pk).order_by("id")[:1000])
    for event in events:
        event.detail_json = json.dumps(event.detail, sort_keys=True) if event.detail else ""
    interventions = list(saga.interventions.order_by("-id")[:100])
    try:
        registry.get(saga.definition, saga.version)
        definition_url = reverse(
            "admin:sagas_definition", kwargs={"name": saga.definition, "version": saga.version}
        )
    except SagaNotRegistered:
        definition_url = None
    return {
        "saga": saga,
        "timeline": saga_timeline(saga, events),
        "events": events,
        "interventions": interventions,
        "related_records": related_records(saga),
        "intervention_buttons": intervention_buttons(request, saga),
        "definition_url": definition_url,
    }


# --- Dashboard ----------------------------------------------------------------------------

RANGES = {
    "1h": ("last hour", timedelta(hours=1)),
    "24h": ("last 24 hours", timedelta(hours=24)),
    "7d": ("last 7 days", timedelta(days=7)),
    "30d": ("last 30 days", timedelta(days=30)),
}
DEFAULT_RANGE = "24h"
# Sagas per minute are drawn in buckets of one of these many minutes, at most ~72 bars.
BUCKET_MINUTES = (1, 5, 10, 15, 30, 60, 120, 240, 360, 720, 1440)
OUTCOMES = {
    "completed": ("completed", "#2e7d32", (Status.COMPLETED,)),
    "compensated": ("compensated", "#ef6c00", (Status.COMPENSATED,)),
    "failed": ("failed (dead letter)", "#c62828", (Status.FAILED,)),
    "in_progress": ("in progress", "#1565c0", SagaInstance.ACTIVE),
}
OUTCOME_OF_STATUS = {
    status: outcome for outcome, (_, _, statuses) in OUTCOMES.items() for status in statuses
}


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def per_minute_counts(
    *, since: datetime, until: datetime, hourly: bool = False
) -> dict[tuple[datetime, str], int]:
    """(minute, status) -> sagas created in it: one grouped query. ``hourly`` groups by the
    hour instead, for charts whose bars span whole hours (a month has 43,200 minutes)."""
    trunc = TruncHour if hourly else TruncMinute
    rows = (
        SagaInstance.objects.filter(created_at__gte=since, created_at__lt=until)
        .annotate(slot=trunc("created_at"))
        .values_list("slot", "status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {(slot, status): n for slot, status, n in rows}


def throughput_chart(*, since: datetime, until: datetime) -> dict[str, Any]:
    """Sagas per minute by outcome, stacked bars in an SVG of fixed size."""
    total_minutes = max(1, math.ceil((until - since).total_seconds() / 60))
    bucket = next((b for b in BUCKET_MINUTES if total_minutes / b <= 72), BUCKET_MINUTES[-1])
    size = bucket * 60
    start_epoch = math.floor(since.timestamp() / size) * size
    count = math.ceil((until.timestamp() - start_epoch) / size)
    series = [dict.fromkeys(OUTCOMES, 0) for _ in range(count)]
    counts = per_minute_counts(since=since, until=until, hourly=bucket % 60 == 0)
    for (minute, status), n in counts.items():
        index = int((minute.timestamp() - start_epoch) // size)
        if 0 <= index < count:
            series[index][OUTCOME_OF_STATUS.get(status, "in_progress")] += n
    peak = max((sum(bucket_counts.values()) for bucket_counts in series), default=0) / bucket
    top = _nice_ceiling(peak)
    left, plot_width, plot_height, top_pad = 56, 840, 180, 12
    slot = plot_width / max(count, 1)
    bars = []
    for index, counts in enumerate(series):
        begins = datetime.fromtimestamp(start_epoch + index * size, tz=since.tzinfo)
        y = top_pad + plot_height
        segments = []
        for outcome, (_, color, _) in OUTCOMES.items():
            if not counts[outcome]:
                continue
            height = counts[outcome] / bucket / top * plot_height
            y -= height
            segments.append(
                {"y": round(y, 1), "height": round(max(height, 0.5), 1), "color": color}
            )
        label_parts = ", ".join(f"{counts[o]} {OUTCOMES[o][0]}" for o in OUTCOMES if counts[o])
        bars.append(
            {
                "x": round(left + index * slot + 0.5, 1),
                "width": round(max(slot - 1, 1), 1),
                "segments": segments,
                "title": f"{begins:%Y-%m-%d %H:%M} ({bucket} min): {label_parts or 'none'}",
                "total": sum(counts.values()),
                "counts": counts,
                "begins": begins,
            }
        )
    label_every = max(1, math.ceil(count / 8))
    x_labels = [
        {
            "x": round(bar["x"] + bar["width"] / 2, 1),
            "label": f"{bar['begins']:%H:%M}" if bucket < 1440 else f"{bar['begins']:%m-%d}",
        }
        for index, bar in enumerate(bars)
        if index % label_every == 0
    ]
    if bucket >= 120:
        for item, bar in zip(x_labels, bars[::label_every], strict=False):
            item["label"] = f"{bar['begins']:%m-%d %H:%M}"
    y_labels = [
        {
            "y": round(top_pad + plot_height - fraction * plot_height, 1),
            "label": f"{top * fraction:g}",
        }
        for fraction in (0, 0.25, 0.5, 0.75, 1)
    ]
    return {
        "bucket_minutes": bucket,
        "bars": bars,
        "x_labels": x_labels,
        "y_labels": y_labels,
        "width": left + plot_width + 10,
        "height": top_pad + plot_height + 28,
        "left": left,
        "plot_right": left + plot_width,
        "plot_bottom": top_pad + plot_height,
        "top_pad": top_pad,
        "legend": [{"label": label, "color": color} for label, color, _ in OUTCOMES.values()],
    }


def dashboard_context(*, range_key: str, now: datetime | None = None) -> dict[str, Any]:
    moment = now or timezone.now()
    label, length = RANGES[range_key]
    since = moment - length
    stats = saga_statistics(since=since, until=moment)
    health = saga_health(now=moment)
    listed = ("pk", "definition", "version", "business_key", "status", "current_step")
    stuck = list(
        SagaInstance.objects.filter(stuck_filter(moment))
        .order_by("updated_at")
        .only(*listed, "updated_at")[:10]
    )
    long_running = list(
        SagaInstance.objects.filter(long_running_filter(moment))
        .order_by("created_at")
        .only(*listed, "created_at")[:10]
    )
    durations = {name: format_seconds(value) for name, value in stats["durations"].items()}
    return {
        "range_key": range_key,
        "range_label": label,
        "ranges": [(key, text) for key, (text, _) in RANGES.items()],
        "since": since,
        "now": moment,
        "stats": stats,
        "by_status": [
            {"status": status, "count": n, "color": STATUS_COLORS.get(status, "#555")}
            for status, n in stats["by_status"].items()
        ],
        "success_rate": format_rate(stats["success_rate"]),
        "compensation_rate": format_rate(stats["compensation_rate"]),
        "durations": durations,
        "health": health,
        "stuck": stuck,
        "long_running": long_running,
        "chart": throughput_chart(since=since, until=moment),
    }


def dashboard_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    range_key = request.GET.get("range", DEFAULT_RANGE)
    if range_key not in RANGES:
        range_key = DEFAULT_RANGE
    context = {
        **model_admin.admin_site.each_context(request),
        **dashboard_context(range_key=range_key),
        "title": "Saga dashboard",
        "subtitle": None,
        "opts": model_admin.opts,
        "app_label": model_admin.opts.app_label,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/sagas/dashboard.html", context)


# --- Saga definitions ---------------------------------------------------------------------


def _callable_name(target: object) -> str:
    if target is None:
        return ""
    if isinstance(target, str):
        return target.rpartition(".")[2]
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", str(target))


def _retry_text(retry: Retry) -> str:
    if retry.retries == 0:
        return "no retries"
    return (
        f"{retry.retries} retries, {retry.backoff.value.lower()} from {retry.delay:g} s "
        f"up to {retry.max_delay:g} s"
    )


def _short(text: str, length: int = 20) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def definition_diagram(definition: Saga) -> dict[str, Any]:
    """Boxes for the steps left to right with forward arrows; below them the compensations,
    linked right to left in the order they run; the pivot and remote steps marked."""
    box_w, box_h, gap, margin = 136, 58, 38, 20
    forward_y = 46
    undo_y = forward_y + box_h + 74
    pivot = definition.pivot_index
    steps: list[dict[str, Any]] = []
    for index, step in enumerate(definition.steps):
        x = margin + index * (box_w + gap)
        forward_only = definition.is_forward_only(index)
        compensable = step.compensate is not None and not forward_only
        notes = []
        if step.pivot:
            notes.append("pivot")
        if step.remote:
            notes.append("remote")
        if forward_only:
            notes.append("forward only")
        if step.nothing_to_undo:
            notes.append("nothing to undo")
        steps.append(
            {
                "step": step,
                "index": index,
                "x": x,
                "cx": x + box_w / 2,
                "name": _short(step.name, 19),
                "action": _short(_callable_name(step.action), 21),
                "compensate": _callable_name(step.compensate),
                "compensate_short": _short(_callable_name(step.compensate), 21),
                "compensable": compensable,
                "forward_only": forward_only,
                "notes": ", ".join(notes),
                "retry": _retry_text(step.retry),
                "compensation_retry": _retry_text(step.compensation_retry) if compensable else "",
                "fill": "#fff8e1" if step.pivot else ("#eceff1" if forward_only else "#e3f2fd"),
                "stroke": "#f9a825" if step.pivot else "#37474f",
                "stroke_width": 3 if step.pivot else 1.5,
                "dash": "6 3" if step.remote else "",
            }
        )
    forward_arrows = [
        {
            "x1": steps[i]["x"] + box_w,
            "x2": steps[i + 1]["x"] - 4,
            "y": forward_y + box_h / 2,
        }
        for i in range(len(steps) - 1)
    ]
    by_name = {item["step"].name: item for item in steps}
    sequence = definition.compensation_sequence(
        [item["step"].name for item in steps if item["compensable"]]
    )
    compensation_arrows = []
    for first, second in itertools.pairwise(sequence):
        a, b = by_name[first], by_name[second]
        y = undo_y + box_h / 2
        if b["index"] == a["index"] - 1:
            compensation_arrows.append(
                {"path": f"M {a['x']} {y} L {b['x'] + box_w + 4} {y}", "order": True}
            )
        else:
            # Not neighbours (a step in between has nothing to undo): go round underneath.
            below = undo_y + box_h + 22
            compensation_arrows.append(
                {
                    "path": (
                        f"M {a['cx']} {undo_y + box_h} C {a['cx']} {below}, {b['cx']} {below}, "
                        f"{b['cx']} {undo_y + box_h + 4}"
                    ),
                    "order": False,
                }
            )
    undo_links = [
        {"x": item["cx"], "y1": forward_y + box_h, "y2": undo_y - 4}
        for item in steps
        if item["compensable"]
    ]
    pivot_line = None
    if pivot is not None and pivot + 1 < len(steps):
        pivot_line = {"x": steps[pivot]["x"] + box_w + gap / 2}
    width = margin * 2 + len(steps) * box_w + (len(steps) - 1) * gap
    return {
        "definition": definition,
        "steps": steps,
        "box_w": box_w,
        "box_h": box_h,
        "forward_y": forward_y,
        "undo_y": undo_y,
        "forward_arrows": forward_arrows,
        "compensation_arrows": compensation_arrows,
        "compensation_sequence": sequence,
        "undo_links": undo_links,
        "pivot_line": pivot_line,
        "width": width,
        "height": undo_y + box_h + 40,
        "mid_forward": forward_y + box_h / 2,
        "mid_undo": undo_y + box_h / 2,
    }


def _instance_counts() -> dict[tuple[str, int], dict[str, int]]:
    counts: dict[tuple[str, int], dict[str, int]] = {}
    rows = (
        SagaInstance.objects.values_list("definition", "version", "status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for name, version, status, n in rows:
        counts.setdefault((name, version), {})[status] = n
    return counts


def definitions_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    counts = _instance_counts()
    rows = [
        {
            "definition": definition,
            "url": reverse(
                "admin:sagas_definition",
                kwargs={"name": definition.name, "version": definition.version},
            ),
            "steps": len(definition.steps),
            "counts": counts.get((definition.name, definition.version), {}),
            "total": sum(counts.get((definition.name, definition.version), {}).values()),
        }
        for definition in registry.all()
    ]
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Saga definitions",
        "subtitle": None,
        "opts": model_admin.opts,
        "app_label": model_admin.opts.app_label,
        "rows": rows,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/sagas/definitions.html", context)


def definition_view(
    model_admin: Any, request: HttpRequest, name: str, version: int
) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    try:
        definition = registry.get(name, version)
    except SagaNotRegistered:
        raise Http404(f"no saga definition {name} v{version}") from None
    counts = (
        SagaInstance.objects.filter(definition=name, version=version)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    changelist = reverse("admin:sagas_sagainstance_changelist")
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{definition.name} v{definition.version}",
        "subtitle": None,
        "opts": model_admin.opts,
        "app_label": model_admin.opts.app_label,
        "diagram": definition_diagram(definition),
        "instances": [
            {
                "status": status,
                "count": n,
                "url": f"{changelist}?definition={name}&version={version}&status__exact={status}",
            }
            for status, n in sorted(counts)
        ],
        "changelist_url": f"{changelist}?definition={name}&version={version}",
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/sagas/definition.html", context)
