"""Statistics and health of the sagas, as the monitoring service of seed 000 describes them.

Used by the admin dashboard, the health endpoint and the metrics. Everything is computed by
the database (aggregates, percentiles) so it stays fast with many sagas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q
from django.utils import timezone

from sagas.conf import saga_setting
from sagas.models import SagaInstance

Status = SagaInstance.Status


@dataclass(frozen=True)
class SagaHealth:
    status: str  # HEALTHY or UNHEALTHY
    active: int
    long_running: int
    stuck: int
    dead_letters: int
    recommendations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "active": self.active,
            "long_running": self.long_running,
            "stuck": self.stuck,
            "dead_letters": self.dead_letters,
            "recommendations": self.recommendations,
        }


def stuck_filter(now: datetime | None = None) -> Q:
    """Unfinished sagas with no progress for STUCK_AFTER_SECONDS (10 minutes)."""
    moment = now or timezone.now()
    return Q(status__in=SagaInstance.ACTIVE) & Q(
        updated_at__lt=moment - timedelta(seconds=saga_setting("STUCK_AFTER_SECONDS"))
    )


def long_running_filter(now: datetime | None = None) -> Q:
    """Unfinished sagas started more than LONG_RUNNING_SECONDS (5 minutes) ago."""
    moment = now or timezone.now()
    return Q(status__in=SagaInstance.ACTIVE) & Q(
        created_at__lt=moment - timedelta(seconds=saga_setting("LONG_RUNNING_SECONDS"))
    )


def saga_health(*, now: datetime | None = None) -> SagaHealth:
    """HEALTHY unless a saga is stuck; with the recommendations an operator should read."""
    moment = now or timezone.now()
    counts = SagaInstance.objects.aggregate(
        active=Count("pk", filter=Q(status__in=SagaInstance.ACTIVE)),
        long_running=Count("pk", filter=long_running_filter(moment)),
        stuck=Count("pk", filter=stuck_filter(moment)),
        dead_letters=Count(
            "pk", filter=Q(dead_lettered_at__isnull=False, resolved_at__isnull=True)
        ),
    )
    recommendations = []
    if counts["stuck"]:
        recommendations.append(
            f"{counts['stuck']} saga(s) made no progress for "
            f"{saga_setting('STUCK_AFTER_SECONDS') // 60:g} minutes: check that the workers "
            "and the services their current steps call are up."
        )
    if counts["long_running"] > 5:
        recommendations.append(
            f"{counts['long_running']} sagas have been running for more than "
            f"{saga_setting('LONG_RUNNING_SECONDS') // 60:g} minutes: look at slow steps and "
            "retry policies."
        )
    if counts["dead_letters"]:
        recommendations.append(
            f"{counts['dead_letters']} saga(s) wait in the dead-letter queue for an operator."
        )
    return SagaHealth(
        status="UNHEALTHY" if counts["stuck"] else "HEALTHY",
        recommendations=recommendations,
        **counts,
    )


def _percentiles(queryset: Any) -> dict[str, float | None]:
    """Average, p50, p95 and p99 of completed_at - created_at, in seconds."""
    durations = queryset.filter(completed_at__isnull=False)
    if connection.vendor == "postgresql":
        # One pass over the filtered rows; all three percentiles from one sort.
        inner = durations.annotate(
            d=ExpressionWrapper(F("completed_at") - F("created_at"), output_field=DurationField())
        ).values_list("d")
        sql, params = inner.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT avg(EXTRACT(EPOCH FROM d)),"
                " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
                f" (ORDER BY EXTRACT(EPOCH FROM d)) FROM ({sql}) AS durations(d)",
                params,
            )
            avg, ranks = cursor.fetchone()
        p50, p95, p99 = ranks or (None, None, None)
        as_float = [None if v is None else float(v) for v in (avg, p50, p95, p99)]
        return dict(zip(("avg", "p50", "p95", "p99"), as_float, strict=True))
    values = sorted(
        (
            row.total_seconds()
            for row in durations.annotate(d=F("completed_at") - F("created_at")).values_list(
                "d", flat=True
            )
        ),
    )
    if not values:
        return {"avg": None, "p50": None, "p95": None, "p99": None}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    return {
        "avg": sum(values) / len(values),
        "p50": pick(0.5),
        "p95": pick(0.95),
        "p99": pick(0.99),
    }


def saga_statistics(
    *, since: datetime, until: datetime | None = None, definition: str | None = None
) -> dict[str, Any]:
    """Counts by status, success and compensation rates, durations and the top failure
    reasons of the sagas created in [since, until)."""
    sagas = SagaInstance.objects.filter(created_at__gte=since)
    if until is not None:
        sagas = sagas.filter(created_at__lt=until)
    if definition:
        sagas = sagas.filter(definition=definition)
    by_status = dict(sagas.values_list("status").annotate(n=Count("pk")).order_by())
    total = sum(by_status.values())
    completed = by_status.get(Status.COMPLETED, 0)
    compensated = by_status.get(Status.COMPENSATED, 0)
    failures = list(
        sagas.filter(status__in=[Status.COMPENSATED, Status.FAILED])
        .exclude(error_code="")
        .values("error_code")
        .annotate(n=Count("pk"))
        .order_by("-n", "error_code")[:10]
    )
    return {
        "total": total,
        "by_status": {status: by_status.get(status, 0) for status in Status.values},
        "success_rate": completed / total if total else None,
        "compensation_rate": compensated / total if total else None,
        "durations": _percentiles(sagas),
        "top_failure_reasons": [(row["error_code"], row["n"]) for row in failures],
        "dead_letters": SagaInstance.objects.filter(
            dead_lettered_at__isnull=False, resolved_at__isnull=True
        ).count(),
    }
