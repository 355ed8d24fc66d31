"""Prometheus metrics of the sagas [seed 001], read from the database at scrape time.

Steps run in qcluster worker processes and ``/metrics`` is served by whichever web process
takes the scrape, so counters kept in process memory would each see a part of the work. The
saga tables already record every outcome, so ``SagaCollector`` asks them instead: each
``collect()`` runs one grouped query over the sagas, one over the steps and two small ones
over the outbox, and turns the rows into counters, histograms and gauges. Any web process
answers with the whole picture, a restarted process loses nothing, and no multiprocess
directory has to be shared.

Seed 001's PromQL works as written: the names are the seed's, the status label values are
lower case (``saga_total{status="completed"}``, ``saga_compensation_total{status="failed"}``)
and ``saga_duration_seconds`` is a histogram with ``_bucket`` series.

Counters are counts of rows, so they only go down when rows are deleted (a retention purge,
an operator retrying a dead letter); Prometheus reads such a drop as a counter reset.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, F, Min, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from sagas.models import SagaInstance, SagaStep
from sagas.stats import long_running_filter, stuck_filter

logger = logging.getLogger("sagas.metrics")

StepStatus = SagaStep.Status
Comp = SagaStep.Compensation

# Seconds. The seed's target is a p95 under 60 s, so the buckets are dense around it.
SAGA_DURATION_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip
STEP_DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip
# Retries of one compensation (attempts - 1); the default policy allows 3.
COMPENSATION_RETRY_BUCKETS: tuple[float, ...] = (0, 1, 2, 3, 5, 10)
# Below Prometheus's default scrape timeout (10 s): a slow database fails our part of the
# scrape (saga_metrics_up 0) instead of stacking up queries scrape after scrape.
COLLECT_TIMEOUT_SECONDS = 8.0

# A step row's status tells where its action ended; a compensated step did complete (or, for
# a remote step, may have), so it stays "completed" here and saga_step_total never goes down
# when a saga compensates. The compensation itself is counted by saga_compensation_total.
_STEP_OUTCOME = {
    StepStatus.PENDING: "pending",
    StepStatus.EXECUTING: "executing",
    StepStatus.COMPLETED: "completed",
    StepStatus.FAILED: "failed",
    StepStatus.COMPENSATING: "completed",
    StepStatus.COMPENSATED: "completed",
    StepStatus.SKIPPED: "skipped",
}
_TERMINAL = {str(status) for status in SagaInstance.TERMINAL}
_ACTIVE = {str(status) for status in SagaInstance.ACTIVE}


def _buckets(counts: Sequence[float], bounds: Sequence[float], total: float) -> list[Any]:
    """Cumulative (le, count) pairs ending with +Inf, as HistogramMetricFamily wants them."""
    pairs = [(repr(float(b)), float(n)) for b, n in zip(bounds, counts, strict=True)]
    return [*pairs, ("+Inf", float(total))]


class _Families:
    """Every family this collector exposes, empty; ``collect`` fills them."""

    def __init__(self) -> None:
        self.saga_total = CounterMetricFamily(
            "saga_total",
            "Finished sagas by outcome (completed, compensated, failed).",
            labels=["definition", "status"],
        )
        self.saga_duration = HistogramMetricFamily(
            "saga_duration_seconds",
            "Start to finish of finished sagas, in seconds.",
            labels=["definition", "status"],
        )
        self.step_total = CounterMetricFamily(
            "saga_step_total",
            "Saga steps by where their action ended (completed, failed, skipped, executing).",
            labels=["definition", "step", "status"],
        )
        self.step_duration = HistogramMetricFamily(
            "saga_step_duration_seconds",
            "Duration of the last attempt of each step, in seconds.",
            labels=["definition", "step"],
        )
        self.step_retries = CounterMetricFamily(
            "saga_step_retries_total",
            "Step attempts after the first (transient failures retried).",
            labels=["definition", "step"],
        )
        self.compensation_total = CounterMetricFamily(
            "saga_compensation_total",
            "Compensations by outcome (compensated, empty, failed, compensating).",
            labels=["definition", "step", "status"],
        )
        self.compensation_retries = HistogramMetricFamily(
            "saga_compensation_retries",
            "Retries each compensation needed (attempts - 1); _sum is the total retries.",
            labels=["definition", "step"],
        )
        self.in_progress = GaugeMetricFamily(
            "saga_in_progress", "Unfinished sagas.", labels=["definition"]
        )
        self.stuck = GaugeMetricFamily(
            "saga_stuck",
            "Unfinished sagas with no progress for 10 minutes (seed 000: UNHEALTHY).",
            labels=["definition"],
        )
        self.long_running = GaugeMetricFamily(
            "saga_long_running",
            "Unfinished sagas started more than 5 minutes ago.",
            labels=["definition"],
        )
        self.dlq_size = GaugeMetricFamily(
            "saga_dlq_size", "Sagas waiting in the dead-letter queue for an operator."
        )
        self.dlq_oldest = GaugeMetricFamily(
            "saga_dlq_oldest_seconds",
            "How long the oldest open dead letter has waited (seed 001: handle within 24 h).",
        )
        self.recovery_lag = GaugeMetricFamily(
            "saga_recovery_lag_seconds",
            "How long the oldest saga nobody runs has waited: since its lease expired, or "
            "since its last progress when it has neither a lease nor a wake-up.",
        )
        self.outbox_messages = GaugeMetricFamily(
            "saga_outbox_messages", "Outbox messages by status.", labels=["status"]
        )
        self.outbox_oldest = GaugeMetricFamily(
            "saga_outbox_oldest_pending_seconds", "Age of the oldest unsent outbox message."
        )
        self.circuit_open = GaugeMetricFamily(
            "payment_gateway_circuit_open",
            "1 while the payment gateway circuit breaker is open (calls fail fast).",
        )
        self.circuit_state = GaugeMetricFamily(
            "payment_gateway_circuit_state",
            "The payment gateway circuit breaker state, one series per state set to 1.",
            labels=["state"],
        )
        self.up = GaugeMetricFamily(
            "saga_metrics_up", "1 when the last collection of the saga metrics succeeded."
        )
        self.collect_seconds = GaugeMetricFamily(
            "saga_metrics_collect_seconds", "Time the saga metrics collection took."
        )

    def all(self) -> list[Metric]:
        return list(vars(self).values())


class SagaCollector:
    """A prometheus_client collector answering from the saga tables (see the module doc)."""

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() at registration, i.e. query
        # the database at import time (before migrations, in manage.py commands).
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        families = _Families()
        started = time.perf_counter()
        try:
            with _bounded():
                now = timezone.now()
                self._sagas(families, now)
                self._steps(families)
                self._outbox(families)
            self._circuit(families)
            families.up.add_metric([], 1)
        except Exception:
            # A broken scrape of ours must not take django-prometheus's metrics down with it:
            # report it and let the alert on saga_metrics_up fire.
            logger.exception("collecting the saga metrics failed")
            families = _Families()
            families.up.add_metric([], 0)
        families.collect_seconds.add_metric([], time.perf_counter() - started)
        return families.all()

    # -- sagas ------------------------------------------------------------------------------

    def _sagas(self, families: _Families, now: datetime) -> None:
        finished = Q(completed_at__isnull=False)
        open_dead = Q(dead_lettered_at__isnull=False, resolved_at=None)
        orphaned = Q(status__in=SagaInstance.ACTIVE) & (
            Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True, wake_at__isnull=True)
        )
        buckets = {
            f"le{i}": Count(
                "pk",
                filter=finished & Q(completed_at__lte=F("created_at") + timedelta(seconds=bound)),
            )
            for i, bound in enumerate(SAGA_DURATION_BUCKETS)
        }
        rows = (
            SagaInstance.objects.order_by()
            .values("definition", "status")
            .annotate(
                n=Count("pk"),
                dead=Count("pk", filter=open_dead),
                dead_since=Min("dead_lettered_at", filter=open_dead),
                stuck=Count("pk", filter=stuck_filter(now)),
                long_running=Count("pk", filter=long_running_filter(now)),
                finished=Count("pk", filter=finished),
                seconds=Sum(F("completed_at") - F("created_at"), filter=finished),
                orphan_since=Min(Coalesce("lease_expires_at", "updated_at"), filter=orphaned),
                **buckets,
            )
        )
        totals: dict[tuple[str, str], float] = {
            (saga.name, status.lower()): 0 for saga in _definitions() for status in _TERMINAL
        }
        active: dict[str, float] = dict.fromkeys((s.name for s in _definitions()), 0)
        stuck = dict(active)
        long_running = dict(active)
        dead = 0
        oldest_orphan: datetime | None = None
        oldest_dead: datetime | None = None
        for row in rows:
            definition, status = row["definition"], row["status"]
            dead += row["dead"]
            if row["dead_since"] is not None:
                oldest_dead = min(oldest_dead or row["dead_since"], row["dead_since"])
            if status in _ACTIVE:
                active[definition] = active.get(definition, 0) + row["n"]
                stuck[definition] = stuck.get(definition, 0) + row["stuck"]
                long_running[definition] = long_running.get(definition, 0) + row["long_running"]
            if row["orphan_since"] is not None:
                oldest_orphan = min(oldest_orphan or row["orphan_since"], row["orphan_since"])
            if status not in _TERMINAL:
                continue
            totals[(definition, status.lower())] = row["n"]
            if row["finished"]:
                counts = [row[f"le{i}"] for i in range(len(SAGA_DURATION_BUCKETS))]
                families.saga_duration.add_metric(
                    [definition, status.lower()],
                    _buckets(counts, SAGA_DURATION_BUCKETS, row["finished"]),
                    _seconds(row["seconds"]),
                )
        for (definition, status), n in sorted(totals.items()):
            families.saga_total.add_metric([definition, status], n)
        for definition in sorted(active):
            families.in_progress.add_metric([definition], active[definition])
            families.stuck.add_metric([definition], stuck[definition])
            families.long_running.add_metric([definition], long_running[definition])
        families.dlq_size.add_metric([], dead)
        waited = (now - oldest_dead).total_seconds() if oldest_dead else 0.0
        families.dlq_oldest.add_metric([], max(0.0, waited))
        lag = (now - oldest_orphan).total_seconds() if oldest_orphan else 0.0
        families.recovery_lag.add_metric([], max(0.0, lag))

    # -- steps ------------------------------------------------------------------------------

    def _steps(self, families: _Families) -> None:
        timed = Q(duration_ms__isnull=False)
        buckets = {
            f"le{i}": Count("pk", filter=Q(duration_ms__lte=round(bound * 1000)))
            for i, bound in enumerate(STEP_DURATION_BUCKETS)
        }
        # compensation_attempts takes a few small values: grouping on it gives the retries
        # histogram exactly, for fewer aggregates per row than a filter per bucket.
        rows = (
            SagaStep.objects.order_by()
            .values(
                "saga__definition",
                "name",
                "status",
                "compensation_status",
                "compensation_attempts",
            )
            .annotate(
                n=Count("pk"),
                attempts_sum=Sum("attempts"),
                tried=Count("pk", filter=Q(attempts__gt=0)),
                timed=Count("pk", filter=timed),
                ms=Sum("duration_ms", filter=timed),
                **buckets,
            )
        )
        totals: dict[tuple[str, str, str], float] = {}
        compensations: dict[tuple[str, str, str], float] = {}
        retries: dict[tuple[str, str], float] = {}
        for saga in _definitions():
            for step in saga.steps:
                totals[(saga.name, step.name, "completed")] = 0
                totals[(saga.name, step.name, "failed")] = 0
                retries[(saga.name, step.name)] = 0
                if step.compensate is not None:
                    compensations[(saga.name, step.name, "compensated")] = 0
                    compensations[(saga.name, step.name, "failed")] = 0
        durations: dict[tuple[str, str], list[float]] = defaultdict(
            lambda: [0.0] * (len(STEP_DURATION_BUCKETS) + 2)
        )
        retry_histograms: dict[tuple[str, str], list[float]] = defaultdict(
            lambda: [0.0] * (len(COMPENSATION_RETRY_BUCKETS) + 2)
        )
        for row in rows:
            key = (row["saga__definition"], row["name"])
            outcome = (*key, _STEP_OUTCOME.get(row["status"], row["status"].lower()))
            totals[outcome] = totals.get(outcome, 0) + row["n"]
            retries[key] = retries.get(key, 0) + (row["attempts_sum"] or 0) - row["tried"]
            if row["compensation_status"] != Comp.NONE:
                status = (*key, row["compensation_status"].lower())
                compensations[status] = compensations.get(status, 0) + row["n"]
            if row["timed"]:
                # Layout: one cumulative count per bucket, then the total, then the sum.
                into = durations[key]
                for i in range(len(STEP_DURATION_BUCKETS)):
                    into[i] += row[f"le{i}"]
                into[-2] += row["timed"]
                into[-1] += (row["ms"] or 0) / 1000
            if row["compensation_attempts"]:
                into = retry_histograms[key]
                retried = row["compensation_attempts"] - 1
                for i, bound in enumerate(COMPENSATION_RETRY_BUCKETS):
                    if retried <= bound:
                        into[i] += row["n"]
                into[-2] += row["n"]
                into[-1] += retried * row["n"]
        for labels, n in sorted(totals.items()):
            families.step_total.add_metric(list(labels), n)
        for labels, n in sorted(retries.items()):
            families.step_retries.add_metric(list(labels), n)
        for labels, n in sorted(compensations.items()):
            families.compensation_total.add_metric(list(labels), n)
        for labels, values in sorted(durations.items()):
            families.step_duration.add_metric(
                list(labels),
                _buckets(values[:-2], STEP_DURATION_BUCKETS, int(values[-2])),
                values[-1],
            )
        for labels, values in sorted(retry_histograms.items()):
            families.compensation_retries.add_metric(
                list(labels),
                _buckets(values[:-2], COMPENSATION_RETRY_BUCKETS, int(values[-2])),
                values[-1],
            )

    # -- outbox and gateway -----------------------------------------------------------------

    def _outbox(self, families: _Families) -> None:
        from sagas.outbox import outbox_backlog

        backlog = outbox_backlog()
        oldest = backlog.pop("oldest_pending_age_seconds")
        for status, n in sorted(backlog.items()):
            families.outbox_messages.add_metric([status.lower()], n)
        families.outbox_oldest.add_metric([], oldest)

    def _circuit(self, families: _Families) -> None:
        from payments.circuit import gateway_breaker

        try:
            state = gateway_breaker.state().state
        except Exception:
            # The breaker lives in the cache; a cache outage must not hide the saga figures.
            logger.warning("payment gateway circuit state unreadable", exc_info=True)
            return
        # Half-open lets a trial call through and stays so until a payment tries: counting it
        # as open would keep the alert firing through a quiet hour.
        families.circuit_open.add_metric([], 1 if state == "open" else 0)
        for name in ("closed", "open", "half_open"):
            families.circuit_state.add_metric([name], 1 if state == name else 0)


@contextlib.contextmanager
def _bounded() -> Iterator[None]:
    """The scrape's queries in one transaction, under a statement timeout on PostgreSQL."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                timeout_ms = int(COLLECT_TIMEOUT_SECONDS * 1000)
                cursor.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
        yield


def _definitions() -> list[Any]:
    from sagas.registry import registry

    return registry.all()


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    # SQLite sums durations as microseconds.
    return float(value) / 1_000_000


_lock = threading.Lock()
_collector: SagaCollector | None = None


def register_saga_metrics(registry: CollectorRegistry = REGISTRY) -> SagaCollector:
    """Register the collector in ``registry`` once per process; later calls return it.

    Called from the URL configuration (the process that serves ``/metrics``) and safe to
    call again from anywhere, e.g. ``SagasConfig.ready()``.
    """
    global _collector
    with _lock:
        if _collector is not None and registry is REGISTRY:
            return _collector
        collector = SagaCollector()
        try:
            registry.register(collector)
        except ValueError:
            # Another copy of this module (a reload under another name) registered first;
            # its collector answers the same queries.
            logger.debug("saga metrics already registered", exc_info=True)
        if registry is REGISTRY:
            _collector = collector
        return collector


def metric_names() -> Iterator[str]:
    """The names a scrape can show, with a histogram's and a counter's sample suffixes."""
    for family in _Families().all():
        yield family.name
        if family.type == "counter":
            yield family.name + "_total"
        if family.type == "histogram":
            yield from (family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
