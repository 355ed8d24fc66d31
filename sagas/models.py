from __future__ import annotations

import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils.timezone import now as timezone_now


class SagaInstance(models.Model):
    class Status(models.TextChoices):
        STARTED = "STARTED"
        EXECUTING = "EXECUTING"
        COMPLETED = "COMPLETED"
        COMPENSATING = "COMPENSATING"
        COMPENSATED = "COMPENSATED"
        # Compensation could not finish: the saga waits in the dead-letter queue.
        FAILED = "FAILED"
        # Past its deadline; compensation follows at once.
        TIMEOUT = "TIMEOUT"

    ACTIVE = (Status.STARTED, Status.EXECUTING, Status.COMPENSATING, Status.TIMEOUT)
    TERMINAL = (Status.COMPLETED, Status.COMPENSATED, Status.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    definition = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    business_key = models.CharField(max_length=200, blank=True)
    correlation_id = models.CharField(max_length=100, blank=True)
    # A caller-chosen key: starting a saga twice under it gives the first instance back.
    dedup_key = models.CharField(max_length=200, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STARTED)
    priority = models.PositiveSmallIntegerField(default=1)
    tags = models.JSONField(default=list, blank=True)
    context = models.JSONField(default=dict, blank=True)
    current_step = models.CharField(max_length=100, blank=True)
    deadline = models.DateTimeField()
    # Who runs it now, and until when: a worker that dies stops renewing, recovery takes over.
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When a delayed retry is due; the timer hands the saga to a worker then.
    wake_at = models.DateTimeField(null=True, blank=True)
    runs = models.PositiveIntegerField(default=0)
    recovery_attempts = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    dead_lettered_at = models.DateTimeField(null=True, blank=True)
    dead_letter_reason = models.TextField(blank=True)
    # An operator closed the dead letter without retrying (fixed by hand, written off).
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True)
    resolution = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("retry_saga", "Can retry a saga now"),
            ("resume_saga", "Can resume a saga"),
            ("compensate_saga", "Can force a saga's compensation"),
            ("skip_step", "Can skip a saga step"),
            ("cancel_saga", "Can cancel a saga"),
            ("resolve_dead_letter", "Can resolve a dead-lettered saga"),
        ]
        # Every index costs each saga three index writes (insert, lease, finish; the updates
        # touch indexed columns, so they are never HOT): only the console's and recovery's
        # queries get one. Keys are looked up by equality (no pattern-ops twin), and rows
        # without a key stay out of that key's index.
        constraints = [
            models.UniqueConstraint(
                fields=["dedup_key"],
                name="saga_dedup_key_unique",
                condition=Q(dedup_key__isnull=False),
            ),
        ]
        indexes = [
            models.Index(
                fields=["business_key"],
                name="saga_business_key_idx",
                condition=~Q(business_key=""),
            ),
            models.Index(
                fields=["correlation_id"],
                name="saga_correlation_idx",
                condition=~Q(correlation_id=""),
            ),
            models.Index(fields=["status", "updated_at"], name="saga_status_updated_idx"),
            models.Index(fields=["definition", "version", "status"], name="saga_definition_idx"),
            models.Index(fields=["-created_at"], name="saga_created_idx"),
            # Recovery and the timer only look at unfinished sagas.
            models.Index(
                fields=["lease_expires_at"],
                name="saga_active_lease_idx",
                condition=Q(status__in=["STARTED", "EXECUTING", "COMPENSATING", "TIMEOUT"]),
            ),
            models.Index(
                fields=["wake_at"], name="saga_wake_idx", condition=Q(wake_at__isnull=False)
            ),
            models.Index(
                fields=["dead_lettered_at"],
                name="saga_dead_letter_idx",
                condition=Q(dead_lettered_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.definition} v{self.version} {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class SagaStep(models.Model):
    """One step of one instance. Its COMPLETED row commits with the step's business writes."""

    class Status(models.TextChoices):
        PENDING = "PENDING"
        EXECUTING = "EXECUTING"
        COMPLETED = "COMPLETED"
        FAILED = "FAILED"
        COMPENSATING = "COMPENSATING"
        COMPENSATED = "COMPENSATED"
        SKIPPED = "SKIPPED"

    class Compensation(models.TextChoices):
        NONE = "NONE"
        COMPENSATING = "COMPENSATING"
        COMPENSATED = "COMPENSATED"
        # The action never took effect: the compensation was a recorded no-op, and an
        # action that arrives later is refused.
        EMPTY = "EMPTY"
        FAILED = "FAILED"

    # No index of its own: the unique (saga, name) constraint serves lookups by saga. No
    # database-level constraint either: only the engine writes step rows, for a saga whose
    # lease it holds, and the constraint's check at each step's commit locked the saga row
    # (FOR KEY SHARE, a write of its own) once per step and event. A deletion still
    # cascades through the ORM.
    saga = models.ForeignKey(
        SagaInstance,
        on_delete=models.CASCADE,
        related_name="steps",
        db_index=False,
        db_constraint=False,
    )
    name = models.CharField(max_length=100)
    index = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    compensation_status = models.CharField(
        max_length=16, choices=Compensation.choices, default=Compensation.NONE
    )
    attempts = models.PositiveIntegerField(default=0)
    compensation_attempts = models.PositiveIntegerField(default=0)
    output = models.JSONField(null=True, blank=True)
    error_type = models.CharField(max_length=200, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    compensated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["saga", "index"]
        constraints = [
            models.UniqueConstraint(fields=["saga", "name"], name="saga_step_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status}/{self.compensation_status})"


class SagaEvent(models.Model):
    """The append-only history of a saga: every transition, in order."""

    class Kind(models.TextChoices):
        STARTED = "saga_started"
        STEP_STARTED = "step_started"
        STEP_COMPLETED = "step_completed"
        STEP_FAILED = "step_failed"
        STEP_SKIPPED = "step_skipped"
        RETRY_SCHEDULED = "retry_scheduled"
        COMPENSATION_STARTED = "compensation_started"
        STEP_COMPENSATED = "step_compensated"
        COMPENSATION_EMPTY = "compensation_empty"
        COMPENSATION_FAILED = "compensation_failed"
        LATE_ACTION_REFUSED = "late_action_refused"
        COMPLETED = "saga_completed"
        COMPENSATED = "saga_compensated"
        TIMED_OUT = "saga_timed_out"
        FAILED = "saga_failed"
        DEAD_LETTERED = "dead_lettered"
        RECOVERED = "recovered"
        OPERATOR = "operator_action"

    # No index of its own: saga_event_history_idx (saga, id) serves lookups by saga. No
    # database-level constraint, for the reasons given at SagaStep.saga.
    saga = models.ForeignKey(
        SagaInstance,
        on_delete=models.CASCADE,
        related_name="events",
        db_index=False,
        db_constraint=False,
    )
    kind = models.CharField(max_length=32, choices=Kind.choices)
    step = models.CharField(max_length=100, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, blank=True)
    actor = models.CharField(max_length=150, blank=True)
    reason = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["saga", "id"], name="saga_event_history_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.step}".strip()


class Intervention(models.Model):
    """The audit row of an operator's action on a saga: who, what, when, why, before/after."""

    saga = models.ForeignKey(SagaInstance, on_delete=models.CASCADE, related_name="interventions")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=32)
    step = models.CharField(max_length=100, blank=True)
    reason = models.TextField()
    status_before = models.CharField(max_length=16)
    status_after = models.CharField(max_length=16)
    # False when a concurrent identical action had already done the work.
    effective = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=~Q(reason=""), name="intervention_has_reason"),
        ]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_name}"


class OutboxMessage(models.Model):
    """A message written in the same transaction as the business change that caused it; the
    relay publishes it after commit, at least once. Consumers dedupe on its id."""

    class Status(models.TextChoices):
        PENDING = "PENDING"
        SENT = "SENT"
        FAILED = "FAILED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=100)
    key = models.CharField(max_length=200, blank=True)
    # Writing the same message twice (a retried step) keeps one row.
    dedup_key = models.CharField(max_length=200, null=True, blank=True)
    payload = models.JSONField(encoder=DjangoJSONEncoder, default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone_now)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["dedup_key"],
                name="outbox_dedup_key_unique",
                condition=Q(dedup_key__isnull=False),
            ),
        ]
        indexes = [
            models.Index(fields=["key"], name="outbox_key_idx", condition=~Q(key="")),
            models.Index(
                fields=["next_attempt_at"],
                name="outbox_pending_idx",
                condition=Q(status="PENDING"),
            ),
            models.Index(fields=["topic", "created_at"], name="outbox_topic_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.id} ({self.status})"


class ProcessedMessage(models.Model):
    """A consumer's record that it handled a message; written in the consumer's own
    transaction, so a message delivered twice has one effect."""

    consumer = models.CharField(max_length=100)
    message_id = models.UUIDField()
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "message_id"], name="processed_message_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.consumer} handled {self.message_id}"


class WebhookSubscription(models.Model):
    """A URL that receives outbox messages as signed POSTs (HMAC-SHA256 of the body)."""

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=200)
    # Topics to deliver; empty means every topic.
    topics = models.JSONField(default=list, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} -> {self.url}"


from sagas.proxies import *  # noqa: E402, F403
