"""The saga state machine: the only writer of SagaInstance.status and SagaStep rows.

How a saga runs:

- ``saga_start`` inserts the instance in the caller's transaction and enqueues ``run_saga``
  after commit. A worker takes the lease (``sagas.leases``) and runs the steps one after
  another in the same process: one broker round trip per saga, not per step. A new saga's
  task carries its row, and its first run takes the row lease with the first step's commit
  (``saga_run``).
- A local step's business writes and its COMPLETED step row commit in one transaction (on
  PostgreSQL the COMMIT goes out with the step row's statement). The row is unique on (saga,
  step), so a second runner cannot complete the step twice: its insert (or compare-and-set
  update) fails and its writes roll back.
- A remote step is marked EXECUTING, called outside any transaction with the idempotency key
  ``<saga id>:<step>``, then marked COMPLETED. Calling it again is safe: the remote side
  dedupes on the key.
- The step row is also the fence: compensating a step whose action never took effect records
  an empty compensation, and an action that arrives after its compensation is refused.
- Business errors (``DomainError``) compensate at once; other errors retry on the step's
  policy. A retry that must wait sets ``wake_at`` and releases the worker; the timer hands the
  saga back to a worker when it is due.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from l2c.db import step_transaction
from l2c.errors import DomainError
from sagas import fastpath
from sagas.conf import saga_setting
from sagas.deadletters import dead_letter_index_add, saga_dead_letter
from sagas.definitions import (
    DEFAULT_STEP_TIMEOUT,
    Saga,
    Step,
    StepContext,
    resolve_callable,
)
from sagas.exceptions import (
    FirstRunDeclined,
    LeaseLost,
    PreconditionFailed,
    StepAlreadyRecorded,
    StepTimeout,
)
from sagas.leases import lease_forget, lease_gate, lease_release, lease_take, new_owner
from sagas.models import SagaEvent, SagaInstance, SagaStep
from sagas.registry import registry
from sagas.testing import fault_point

logger = logging.getLogger("sagas.engine")

Status = SagaInstance.Status
StepStatus = SagaStep.Status
Comp = SagaStep.Compensation
Kind = SagaEvent.Kind

_json = DjangoJSONEncoder()
# How PostgreSQL and SQLite name a violation of the (saga, step) unique constraint.
_STEP_UNIQUE = ("saga_step_unique_name", "sagas_sagastep.saga_id, sagas_sagastep.name")


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so Decimals and dates are stored as the text they print as."""
    import json

    return json.loads(_json.encode(value)) if value is not None else None


def _log_transition(
    level: int,
    instance: SagaInstance,
    event: str,
    status: str,
    message: str,
    *args: Any,
    step: str = "",
    attempt: int | None = None,
    duration_ms: int | None = None,
    started_at: datetime | None = None,
    **fields: Any,
) -> None:
    """One line per saga or step transition, with the fields a JSON log needs to follow a
    saga (``LOG_FORMAT=json``). Returns at once when the level is off: the hot path pays a
    call and a level check, nothing is built."""
    if not logger.isEnabledFor(level):
        return
    if duration_ms is None and started_at is not None:
        duration_ms = int((timezone.now() - started_at).total_seconds() * 1000)
    extra = {
        "event": event,
        "saga_id": str(instance.pk),
        "correlation_id": instance.correlation_id,
        "definition": instance.definition,
        "step": step,
        "status": status,
        "attempt": attempt,
        "duration_ms": duration_ms,
        **fields,
    }
    logger.log(level, message, *args, extra=extra)


def _retry_event(step: str, attempt: int, delay: float, **detail: Any) -> SagaEvent:
    return SagaEvent(
        kind=Kind.RETRY_SCHEDULED,
        step=step,
        attempt=attempt + 1,
        detail={"delay_seconds": round(delay, 3), **detail},
        created_at=timezone.now(),
    )


# --- Starting -----------------------------------------------------------------------------


def saga_start(
    saga: Saga | str,
    *,
    data: Mapping[str, Any],
    business_key: str = "",
    correlation_id: str = "",
    dedup_key: str | None = None,
    version: int | None = None,
    enqueue: bool = True,
) -> SagaInstance:
    """Create a saga instance in the caller's transaction; a worker runs it after commit.

    ``dedup_key`` makes the start idempotent: the first instance under it is returned.
    """
    definition = _definition(saga, version)
    now = timezone.now()
    instance = SagaInstance(
        definition=definition.name,
        version=definition.version,
        business_key=business_key,
        correlation_id=correlation_id,
        dedup_key=dedup_key,
        priority=int(definition.priority),
        tags=list(definition.tags),
        context=_jsonable(dict(data)),
        deadline=now + timedelta(seconds=definition.deadline),
        created_at=now,
        updated_at=now,
    )
    event = fastpath.Event(kind=Kind.STARTED, status=Status.STARTED, created_at=now)
    if fastpath.enabled():
        # One statement, atomic on its own: in autocommit no BEGIN and COMMIT, in the
        # caller's transaction no savepoint (a taken dedup_key inserts nothing).
        if not fastpath.saga_insert(instance=instance, event=event):
            return SagaInstance.objects.get(dedup_key=dedup_key)
    else:
        try:
            # The savepoint is only needed to survive a dedup_key conflict.
            with transaction.atomic(savepoint=dedup_key is not None):
                instance.save(force_insert=True)
                event.as_model(instance.pk).save(force_insert=True)
        except IntegrityError:
            if dedup_key is None:
                raise
            return SagaInstance.objects.get(dedup_key=dedup_key)
    instance._state.adding = False
    _log_transition(
        logging.INFO, instance, "saga_started", "started", "saga %s started", instance.pk
    )
    if enqueue:
        # robust: the saga is committed whatever the broker says; when the broker is down,
        # recovery finds the saga without a task and hands it over later. In autocommit
        # this runs at once.
        # On PostgreSQL the task carries the row just written: its first run reads nothing
        # and takes the lease with its first step (see saga_run).
        first = fastpath.saga_snapshot(instance) if fastpath.enabled() else None
        transaction.on_commit(
            lambda: enqueue_run(instance.pk, definition.priority, first=first), robust=True
        )
    return instance


def _definition(saga: Saga | str, version: int | None) -> Saga:
    if isinstance(saga, Saga):
        return saga
    return registry.get(saga, version) if version else registry.latest(saga)


def enqueue_run(saga_id: object, priority: int = 1, *, first: tuple | None = None) -> None:
    """Hand a saga to the worker pool. Safe to call twice: the lease admits one runner.
    ``first``: the new saga's row (``fastpath.saga_snapshot``), for its first run."""
    from django_q.tasks import async_task

    from sagas.definitions import Priority

    queues = saga_setting("PRIORITY_QUEUES")
    cluster = queues.get(Priority(priority).name) if queues else None
    options: dict[str, Any] = {"task_name": f"saga {saga_id}", "broker": _broker(cluster)}
    args = (str(saga_id),) if first is None else (str(saga_id), first)
    async_task("sagas.tasks.run_saga", *args, q_options=options)


_brokers: dict[str | None, Any] = {}


def _broker(cluster: str | None) -> Any:
    """One broker per queue and process: building one per enqueue costs a connection setup."""
    from django_q.brokers import get_broker

    broker = _brokers.get(cluster)
    if broker is None:
        broker = _brokers[cluster] = get_broker(cluster)
    return broker


# --- Running ------------------------------------------------------------------------------


def saga_run(
    saga_id: object, *, owner: str | None = None, first: tuple | None = None
) -> str | None:
    """Run a saga as far as it can go now. Returns its status, or None when another runner
    holds it (a duplicate delivery: nothing to do).

    ``first``: the row a new saga's start wrote. Its first run then takes the Redis gate
    only, runs the first step, and takes the row lease in that step's bookkeeping statement,
    on the condition that the saga is still new and nobody holds it: one statement and one
    round trip less per saga. Whatever goes wrong in that first step (the condition, or the
    step's own failure) rolls it back whole, and the run takes the lease the usual way and
    starts again from the first step."""
    owner = owner or new_owner()
    seconds = saga_setting("LEASE_SECONDS")
    gated = False
    if first is not None and fastpath.enabled():
        if not lease_gate(saga_id, owner, seconds):
            return None
        gated = True
        runner = _Runner.first_run(saga_id, first, owner)
        if runner is not None:
            try:
                return _drive(runner)
            except FirstRunDeclined:
                logger.debug("saga %s: first run declined; taking the lease", saga_id)
    instance = lease_take(saga_id, owner, seconds, gate=not gated)
    if instance is None:
        return None
    try:
        runner = _Runner(instance, owner)
    except BaseException:
        lease_release(saga_id, owner)
        raise
    return _drive(runner)


def _drive(runner: _Runner) -> str | None:
    saga_id, owner = runner.saga_id, runner.owner
    try:
        return runner.run()
    except LeaseLost:
        logger.warning("saga %s: lease lost to another runner; stopping", saga_id)
        return None
    finally:
        if runner.lease_pending:
            # A first run that never took the row lease: the caller goes on with the gate.
            pass
        elif runner.finished:
            # A completed saga is never run again: its Redis gate may simply expire, which
            # saves a round trip per saga. Every other ending hands the saga on at once.
            pass
        elif runner.released:
            lease_forget(saga_id, owner)
        else:
            lease_release(saga_id, owner)


class _Outcome:
    DONE = "done"
    WAIT = "wait"
    GIVE_UP = "give_up"


@dataclass
class _Failure:
    error: BaseException
    code: str
    message: str
    traceback: str
    business: bool

    @classmethod
    def of(cls, error: BaseException) -> _Failure:
        business = isinstance(error, DomainError)
        code = error.code if business else type(error).__name__
        return cls(
            error=error,
            code=code,
            message=str(error) or type(error).__name__,
            traceback="".join(traceback.format_exception(error))[-8000:],
            business=business,
        )


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise StepTimeout inside the step when it overruns; only the main thread can be
    interrupted (a worker process runs tasks there), elsewhere the overrun is caught after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise StepTimeout(f"step ran past its {seconds:g} s timeout")

    # There is one alarm per process, and the worker's own task timeout (django-q2 arms it
    # around each task) is on it: take it over for the step, then give back what is left.
    # Disarmed before the handler changes: an outer alarm falling due in between (one handed
    # back a moment ago, due at once) would otherwise be taken for this step's timeout.
    outer, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    armed = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            # Due during the step: it goes off right after it instead.
            left = max(outer - (time.monotonic() - armed), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, interval)


class _Runner:
    @classmethod
    def first_run(cls, saga_id: object, snapshot: Any, owner: str) -> _Runner | None:
        """The runner of a new saga's first run (see saga_run), or None when there is none:
        the definition's first step is remote or also its last, or ``snapshot`` is not one."""
        now = timezone.now()
        instance = fastpath.first_run_instance(
            saga_id, snapshot, owner=owner, expires_at=now, now=now
        )
        if instance is None:
            return None
        definition = registry.get(instance.definition, instance.version)
        if len(definition.steps) < 2 or definition.steps[0].remote:
            return None
        instance.lease_expires_at = now + timedelta(seconds=cls.lease_seconds_of(definition))
        runner = cls(instance, owner)
        runner.lease_pending = True
        return runner

    @staticmethod
    def lease_seconds_of(definition: Saga) -> float:
        # Each write renews the lease for long enough to cover the slowest step.
        return max(
            saga_setting("LEASE_SECONDS"),
            max(step.timeout for step in definition.steps) + saga_setting("LEASE_MARGIN_SECONDS"),
        )

    def __init__(self, instance: SagaInstance, owner: str):
        self.saga_id = instance.pk
        self.owner = owner
        self.released = False
        self.finished = False
        # A first run whose first step has not yet taken the row lease (see saga_run).
        self.lease_pending = False
        # The last step committed, but the saga row had another owner by then.
        self.lease_lost = False
        self.instance = instance
        self.definition = registry.get(self.instance.definition, self.instance.version)
        # A first run has no step rows to read; a row written meanwhile by someone else (an
        # operator's skip) shows up as a conflict on insert and is handled there.
        self.lease_seconds = self.lease_seconds_of(self.definition)
        self.rows: dict[str, SagaStep] = (
            {}
            if self.instance.runs == 1 and self.instance.recovery_attempts == 0
            else {row.name: row for row in self.instance.steps.all()}
        )

    # -- bookkeeping helpers ----------------------------------------------------------------

    def _update_saga(self, *, release: bool = False, **fields: Any) -> None:
        """Update the saga row, fenced on our lease; raises LeaseLost when it was taken."""
        now = timezone.now()
        fields.setdefault("updated_at", now)
        if release:
            fields.update(lease_owner="", lease_expires_at=None)
        else:
            fields["lease_expires_at"] = now + timedelta(seconds=self.lease_seconds)
        updated = SagaInstance.objects.filter(pk=self.saga_id, lease_owner=self.owner).update(
            **fields
        )
        if not updated:
            raise LeaseLost(str(self.saga_id))
        for name, value in fields.items():
            setattr(self.instance, name, value)
        if release:
            self.released = True

    def _events(self, *events: SagaEvent | fastpath.Event) -> None:
        rows = []
        for event in events:
            if isinstance(event, fastpath.Event):
                event = event.as_model(self.saga_id)
            event.saga_id = self.saga_id
            rows.append(event)
        SagaEvent.objects.bulk_create(rows)

    def _context(self, step: Step, attempt: int) -> StepContext:
        results = {
            name: row.output or {}
            for name, row in self.rows.items()
            if row.status == StepStatus.COMPLETED
        }
        return StepContext(
            saga_id=str(self.saga_id),
            step=step.name,
            key=f"{self.saga_id}:{step.name}",
            data=self.instance.context,
            results=results,
            attempt=attempt,
            timeout=step.timeout,
            business_key=self.instance.business_key,
            correlation_id=self.instance.correlation_id,
        )

    # -- the state machine ------------------------------------------------------------------

    def run(self) -> str:
        status = self.instance.status  # the lease moved STARTED to EXECUTING
        if status == Status.EXECUTING:
            return self._forward()
        return self._backward()

    def _forward(self) -> str:
        definition = self.definition
        for index, step in enumerate(definition.steps):
            row = self.rows.get(step.name)
            if row is not None and row.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
                continue
            if row is not None and row.compensation_status != Comp.NONE:
                # The step was compensated (or fenced) before its action ran: refuse it.
                _, refused = self._after_conflict(step)
                assert refused is not None
                return self._begin_compensation(code=refused.code, message=refused.message)
            forward_only = definition.is_forward_only(index)
            now = timezone.now()
            late = now >= self.instance.deadline
            if self.lease_pending and (index > 0 or row is not None or late):
                raise FirstRunDeclined(str(self.saga_id))
            if not forward_only and late:
                return self._time_out()
            if row is not None and row.next_attempt_at and row.next_attempt_at > now:
                return self._sleep_until(row.next_attempt_at)
            while True:
                outcome, failure = self._attempt(step, index)
                if outcome != _Outcome.WAIT or failure is not None:
                    break
            if outcome == _Outcome.DONE:
                continue
            if outcome == _Outcome.WAIT:
                return self.instance.status
            assert failure is not None
            if forward_only:
                return self._dead_letter(
                    status=Status.FAILED,
                    reason=(
                        f"step {step.name} after the pivot failed and cannot be compensated: "
                        f"{failure.code}: {failure.message}"
                    ),
                    code=failure.code,
                )
            return self._begin_compensation(code=failure.code, message=failure.message)
        return self._complete()

    def _attempt(self, step: Step, index: int) -> tuple[str, _Failure | None]:
        row = self.rows.get(step.name)
        attempt = (row.attempts if row else 0) + 1
        started = timezone.now()
        clock = time.monotonic()
        ctx = self._context(step, attempt)
        try:
            if step.remote:
                output = self._run_remote(step, index, ctx, attempt, started, clock)
            else:
                output = self._run_local(step, index, ctx, attempt, started, clock)
        except LeaseLost:
            raise
        except Exception as error:
            if self.lease_pending:
                # Rolled back whole, the lease not taken: the usual run does the step again.
                raise FirstRunDeclined(str(self.saga_id)) from error
            if isinstance(error, StepAlreadyRecorded):
                return self._after_conflict(step)
            return self._after_failure(step, index, attempt, started, clock, error)
        fault_point(f"{step.name}.after_commit")
        logger.debug("saga %s step %s completed: %s", self.saga_id, step.name, output)
        _log_transition(
            logging.INFO,
            self.instance,
            "step_completed",
            "completed",
            "saga %s step %s completed",
            self.saga_id,
            step.name,
            step=step.name,
            attempt=attempt,
            duration_ms=getattr(self.rows.get(step.name), "duration_ms", None),
        )
        return _Outcome.DONE, None

    def _check(self, step: Step, ctx: StepContext) -> None:
        check = step.check_fn()
        if check is not None and not check(ctx):
            raise PreconditionFailed(f"precondition of step {step.name} does not hold")

    def _run_local(
        self,
        step: Step,
        index: int,
        ctx: StepContext,
        attempt: int,
        started: datetime,
        clock: float,
    ) -> Any:
        try:
            with step_transaction():
                self._check(step, ctx)
                with _time_limit(step.timeout):
                    output = _jsonable(step.action_fn()(ctx))
                if time.monotonic() - clock > step.timeout:
                    raise StepTimeout(f"step ran past its {step.timeout:g} s timeout")
                fault_point(f"{step.name}.before_commit")
                self._record_completed(step, index, attempt, started, clock, output)
            # Committed: only now does the saga row say what a first run assumed from the start.
            self.lease_pending = False
            if self.lease_lost:
                raise LeaseLost(str(self.saga_id))
        except IntegrityError as error:
            # Our step row's unique constraint: another runner completed the step first,
            # and this attempt's business writes were rolled back with it.
            if any(marker in str(error) for marker in _STEP_UNIQUE):
                raise StepAlreadyRecorded(step.name) from error
            raise
        return output

    def _run_remote(
        self,
        step: Step,
        index: int,
        ctx: StepContext,
        attempt: int,
        started: datetime,
        clock: float,
    ) -> Any:
        previous = self.rows.get(step.name)
        resolve = step.resolve_fn()
        if (
            resolve is not None
            and previous is not None
            and previous.status in (StepStatus.EXECUTING, StepStatus.FAILED)
        ):
            # An earlier attempt may have taken effect without us recording it: ask first.
            with _time_limit(step.timeout):
                known = resolve(ctx)
            if known is not None:
                output = _jsonable(known)
                with transaction.atomic():
                    self._record_completed(step, index, attempt, started, clock, output)
                return output
        # On PostgreSQL a first attempt without a precondition is one statement, atomic on
        # its own: no BEGIN and COMMIT around it.
        one_statement = fastpath.enabled() and step.check is None and previous is None
        with contextlib.nullcontext() if one_statement else transaction.atomic():
            self._check(step, ctx)
            self._mark_executing(step, index, attempt, started)
        fault_point(f"{step.name}.before_remote")
        with _time_limit(step.timeout):
            output = _jsonable(step.action_fn()(ctx))
        fault_point(f"{step.name}.after_remote")
        if time.monotonic() - clock > step.timeout:
            raise StepTimeout(f"step ran past its {step.timeout:g} s timeout")
        try:
            # The step row is there now: completing it is one statement on PostgreSQL.
            with contextlib.nullcontext() if fastpath.enabled() else transaction.atomic():
                self._record_completed(step, index, attempt, started, clock, output)
        except StepAlreadyRecorded:
            self._refuse_late_remote(step, ctx)
            raise
        return output

    def _mark_executing(self, step: Step, index: int, attempt: int, started: datetime) -> None:
        row = self.rows.get(step.name)
        fields = {
            "status": StepStatus.EXECUTING,
            "attempts": attempt,
            "started_at": started,
            "next_attempt_at": None,
        }
        if row is None and fastpath.enabled():
            now = timezone.now()
            expires = now + timedelta(seconds=self.lease_seconds)
            try:
                pk = fastpath.step_insert_executing(
                    saga_id=self.saga_id,
                    owner=self.owner,
                    name=step.name,
                    index=index,
                    attempts=attempt,
                    started_at=started,
                    lease_expires_at=expires,
                    event=fastpath.Event(
                        kind=Kind.STEP_STARTED, step=step.name, attempt=attempt, created_at=started
                    ),
                )
            except IntegrityError:
                raise StepAlreadyRecorded(step.name) from None
            if pk is None:
                raise LeaseLost(str(self.saga_id))
            self.rows[step.name] = fastpath.step_row(
                id=pk, saga_id=self.saga_id, name=step.name, index=index, **fields
            )
            self.instance.current_step = step.name
            self.instance.updated_at = now
            self.instance.lease_expires_at = expires
            return
        if row is None:
            try:
                with transaction.atomic():
                    row = SagaStep.objects.create(
                        saga_id=self.saga_id, name=step.name, index=index, **fields
                    )
            except IntegrityError:
                raise StepAlreadyRecorded(step.name) from None
            self.rows[step.name] = row
        else:
            moved = (
                SagaStep.objects.filter(pk=row.pk, compensation_status=Comp.NONE)
                .exclude(status__in=[StepStatus.COMPLETED, StepStatus.SKIPPED])
                .update(**fields)
            )
            if not moved:
                raise StepAlreadyRecorded(step.name)
            for name, value in fields.items():
                setattr(row, name, value)
        self._events(
            SagaEvent(kind=Kind.STEP_STARTED, step=step.name, attempt=attempt, created_at=started)
        )
        self._update_saga(current_step=step.name)

    def _record_completed(
        self,
        step: Step,
        index: int,
        attempt: int,
        started: datetime,
        clock: float,
        output: Any,
    ) -> None:
        """Write the COMPLETED step row in the current transaction; the unique (saga, step)
        row, or the compare-and-set on an existing one, admits exactly one completion.

        A local step gets one event: its start is not a state anyone can see (it commits
        with its completion), so ``step_completed`` carries the duration instead. On
        PostgreSQL the last local step also finishes the saga in the same statement."""
        now = timezone.now()
        duration_ms = int((time.monotonic() - clock) * 1000)
        fields = {
            "status": StepStatus.COMPLETED,
            "attempts": attempt,
            "output": output,
            "started_at": started,
            "finished_at": now,
            "duration_ms": duration_ms,
            "next_attempt_at": None,
        }
        row = self.rows.get(step.name)
        event = fastpath.Event(
            kind=Kind.STEP_COMPLETED,
            step=step.name,
            attempt=attempt,
            detail={"duration_ms": duration_ms},
            created_at=now,
        )
        if self.lease_pending:
            pk = fastpath.first_step_insert_completed(
                saga_id=self.saga_id,
                owner=self.owner,
                expires_at=self.instance.lease_expires_at,
                now=self.instance.updated_at,
                name=step.name,
                index=index,
                attempts=attempt,
                output=output,
                started_at=started,
                finished_at=now,
                duration_ms=duration_ms,
                event=event,
            )
            self.rows[step.name] = fastpath.step_row(
                id=pk, saga_id=self.saga_id, name=step.name, index=index, **fields
            )
            return
        if row is None and fastpath.enabled():
            # No savepoint: a unique violation here aborts the whole step transaction, which
            # is what must happen; the caller turns it into StepAlreadyRecorded.
            finish = None
            if not step.remote and index + 1 == len(self.definition.steps):
                finish = self._completed_fields(now)
            # The statement ends a local step's transaction unless the saga row must still
            # be written in it: its COMMIT then goes out with it (one round trip less). For
            # the last step that means the step stays committed when the lease turns out to
            # be lost: its row fences it, and the lease's holder finishes the saga.
            renew = self._lease_short(index)
            pk, finished, committed = fastpath.step_insert_completed(
                saga_id=self.saga_id,
                name=step.name,
                index=index,
                attempts=attempt,
                output=output,
                started_at=started,
                finished_at=now,
                duration_ms=duration_ms,
                events=[
                    event,
                    fastpath.Event(kind=Kind.COMPLETED, status=Status.COMPLETED, created_at=now),
                ]
                if finish
                else [event],
                finish=finish,
                owner=self.owner,
                commit=not step.remote and not renew,
            )
            if finish is not None and not finished and not committed:
                raise LeaseLost(str(self.saga_id))  # rolls the step back with it
            if finish is not None and not finished:
                # Committed: the block must end normally so that the step's on-commit
                # callbacks run; _run_local stops the run after it.
                self.lease_lost = True
            elif finish is not None:
                self.released = self.finished = True
                for name, value in finish.items():
                    setattr(self.instance, name, value)
            self.rows[step.name] = fastpath.step_row(
                id=pk, saga_id=self.saga_id, name=step.name, index=index, **fields
            )
            if renew:
                self._renew_lease(index)
            return
        if row is None:
            self.rows[step.name] = SagaStep.objects.create(
                saga_id=self.saga_id, name=step.name, index=index, **fields
            )
        elif fastpath.enabled():
            if not fastpath.step_update_completed(
                pk=row.pk,
                attempts=attempt,
                output=output,
                started_at=started,
                finished_at=now,
                duration_ms=duration_ms,
                event=event,
            ):
                raise StepAlreadyRecorded(step.name)
            for name, value in fields.items():
                setattr(row, name, value)
            self._renew_lease_if_short(index)
            return
        else:
            allowed = [StepStatus.PENDING, StepStatus.FAILED, StepStatus.EXECUTING]
            moved = SagaStep.objects.filter(
                pk=row.pk, status__in=allowed, compensation_status=Comp.NONE
            ).update(**fields)
            if not moved:
                raise StepAlreadyRecorded(step.name)
            for name, value in fields.items():
                setattr(row, name, value)
        self._events(event)
        self._renew_lease_if_short(index)

    def _renew_lease_if_short(self, index: int) -> None:
        if self._lease_short(index):
            self._renew_lease(index)

    def _lease_short(self, index: int) -> bool:
        """The step row's unique constraint already fences a runner that lost its lease, so
        the saga row is only touched when the lease would not cover the next step."""
        steps = self.definition.steps
        if index + 1 >= len(steps):
            return False
        needed = steps[index + 1].timeout + saga_setting("LEASE_MARGIN_SECONDS")
        expires = self.instance.lease_expires_at
        return expires is None or (expires - timezone.now()).total_seconds() < needed

    def _renew_lease(self, index: int) -> None:
        self._update_saga(current_step=self.definition.steps[index + 1].name)

    def _after_conflict(self, step: Step) -> tuple[str, _Failure | None]:
        """Our step write lost: someone completed the step, or it was compensated."""
        row = SagaStep.objects.get(saga_id=self.saga_id, name=step.name)
        self.rows[step.name] = row
        if row.status in (StepStatus.COMPLETED, StepStatus.SKIPPED) and (
            row.compensation_status == Comp.NONE
        ):
            return _Outcome.DONE, None
        with transaction.atomic():
            self._events(
                SagaEvent(
                    kind=Kind.LATE_ACTION_REFUSED,
                    step=step.name,
                    reason="the step was compensated before its action could complete",
                    created_at=timezone.now(),
                )
            )
            self._update_saga()
        error = PreconditionFailed(f"step {step.name} was compensated; its action was refused")
        return _Outcome.GIVE_UP, _Failure.of(error)

    def _refuse_late_remote(self, step: Step, ctx: StepContext) -> None:
        """A remote action finished after its step was compensated: its effect is real, so
        undo it again (compensations are idempotent) rather than leave it standing."""
        compensate = step.compensate_fn()
        if compensate is not None:
            compensate(ctx)

    def _after_failure(
        self,
        step: Step,
        index: int,
        attempt: int,
        started: datetime,
        clock: float,
        error: BaseException,
    ) -> tuple[str, _Failure | None]:
        failure = _Failure.of(error)
        retryable = step.retry.is_retryable(error) and attempt < step.retry.max_attempts
        now = timezone.now()
        delay = step.retry.delay_after(attempt) if retryable else 0.0
        next_at = now + timedelta(seconds=delay) if retryable and delay > 0 else None
        fields = {
            "status": StepStatus.FAILED,
            "attempts": attempt,
            "started_at": started,
            "finished_at": now,
            "duration_ms": int((time.monotonic() - clock) * 1000),
            "error_type": f"{type(error).__module__}.{type(error).__qualname__}"[:200],
            "error_code": failure.code[:100],
            "error_message": failure.message,
            "error_traceback": failure.traceback,
            "next_attempt_at": next_at,
        }
        events = [
            SagaEvent(
                kind=Kind.STEP_FAILED,
                step=step.name,
                attempt=attempt,
                reason=failure.message[:2000],
                detail={
                    "code": failure.code,
                    "business": failure.business,
                    "duration_ms": fields["duration_ms"],
                },
                created_at=now,
            )
        ]
        if retryable:
            events.append(_retry_event(step.name, attempt, delay))
        with transaction.atomic():
            row = self.rows.get(step.name)
            if row is None:
                try:
                    with transaction.atomic():
                        row = SagaStep.objects.create(
                            saga_id=self.saga_id, name=step.name, index=index, **fields
                        )
                except IntegrityError:
                    return self._after_conflict(step)
                self.rows[step.name] = row
            else:
                moved = SagaStep.objects.filter(
                    pk=row.pk,
                    status__in=[StepStatus.PENDING, StepStatus.FAILED, StepStatus.EXECUTING],
                    compensation_status=Comp.NONE,
                ).update(**fields)
                if not moved:
                    return self._after_conflict(step)
                for name, value in fields.items():
                    setattr(row, name, value)
            self._events(*events)
            saga_fields: dict[str, Any] = {
                "current_step": step.name,
                "error_code": failure.code[:100],
                "error_message": failure.message,
            }
            if next_at is not None:
                saga_fields["wake_at"] = next_at
                self._update_saga(release=True, **saga_fields)
            else:
                self._update_saga(**saga_fields)
        _log_transition(
            logging.INFO,
            self.instance,
            "step_failed",
            "failed",
            "saga %s step %s attempt %s failed (%s): %s",
            self.saga_id,
            step.name,
            attempt,
            "retry" if retryable else "give up",
            failure.message,
            step=step.name,
            attempt=attempt,
            duration_ms=fields["duration_ms"],
            retry=retryable,
            delay_seconds=round(delay, 3),
            error_code=failure.code,
        )
        if retryable:
            return _Outcome.WAIT, None if next_at is None else failure
        return _Outcome.GIVE_UP, failure

    def _sleep_until(self, when: datetime) -> str:
        with transaction.atomic():
            self._update_saga(release=True, wake_at=when)
        return self.instance.status

    def _completed_fields(self, now: datetime) -> dict[str, Any]:
        return {
            "status": Status.COMPLETED,
            "current_step": "",
            "completed_at": now,
            "updated_at": now,
            "wake_at": None,
            "error_code": "",
            "error_message": "",
            "lease_owner": "",
            "lease_expires_at": None,
        }

    def _complete(self) -> str:
        if self.finished:  # the last step's transaction finished the saga
            self._log_completed()
            return Status.COMPLETED
        now = timezone.now()
        fields = self._completed_fields(now)
        event = fastpath.Event(kind=Kind.COMPLETED, status=Status.COMPLETED, created_at=now)
        if fastpath.enabled():
            if not fastpath.saga_finish(
                saga_id=self.instance.pk, owner=self.owner, fields=fields, events=[event]
            ):
                raise LeaseLost(str(self.saga_id))
            self.released = self.finished = True
            self._log_completed()
            return Status.COMPLETED
        with transaction.atomic():
            self._update_saga(release=True, **fields)
            self._events(event)
        self.finished = True
        self._log_completed()
        return Status.COMPLETED

    def _log_completed(self) -> None:
        _log_transition(
            logging.INFO,
            self.instance,
            "saga_completed",
            "completed",
            "saga %s completed",
            self.saga_id,
            started_at=self.instance.created_at,
        )

    def _time_out(self) -> str:
        now = timezone.now()
        with transaction.atomic():
            self._update_saga(
                status=Status.TIMEOUT,
                error_code="deadline_exceeded",
                error_message=f"the saga passed its deadline of {self.definition.deadline:g} s",
            )
            self._events(SagaEvent(kind=Kind.TIMED_OUT, status=Status.TIMEOUT, created_at=now))
        _log_transition(
            logging.WARNING,
            self.instance,
            "saga_timed_out",
            "timeout",
            "saga %s passed its deadline",
            self.saga_id,
            started_at=self.instance.created_at,
            error_code="deadline_exceeded",
        )
        return self._backward()

    def _begin_compensation(self, *, code: str, message: str) -> str:
        now = timezone.now()
        with transaction.atomic():
            self._update_saga(
                status=Status.COMPENSATING, error_code=code[:100], error_message=message
            )
            self._events(
                SagaEvent(
                    kind=Kind.COMPENSATION_STARTED,
                    status=Status.COMPENSATING,
                    reason=message[:2000],
                    detail={"code": code},
                    created_at=now,
                )
            )
        _log_transition(
            logging.INFO,
            self.instance,
            "compensation_started",
            "compensating",
            "saga %s compensating: %s",
            self.saga_id,
            code,
            error_code=code,
        )
        return self._backward()

    # -- compensation -----------------------------------------------------------------------

    def _backward(self) -> str:
        definition = self.definition
        completed = [
            step.name
            for step in definition.steps
            if (row := self.rows.get(step.name)) is not None and row.status == StepStatus.COMPLETED
        ]
        # A remote step whose outcome is unknown may have taken effect: compensate it too.
        uncertain = [
            step.name
            for step in definition.steps
            if step.remote
            and (row := self.rows.get(step.name)) is not None
            and row.status in (StepStatus.FAILED, StepStatus.EXECUTING)
        ]
        sequence = definition.compensation_sequence(completed + uncertain)
        exhausted: list[str] = []
        for name in sequence:
            step = definition.step(name)
            index = definition.index_of(name)
            row = self.rows[name]
            if definition.is_forward_only(index) or step.compensate is None:
                continue
            if row.compensation_status in (Comp.COMPENSATED, Comp.EMPTY):
                continue
            if row.compensation_status == Comp.FAILED:
                exhausted.append(name)
                continue
            now = timezone.now()
            if row.next_attempt_at and row.next_attempt_at > now:
                return self._sleep_until(row.next_attempt_at)
            while True:
                outcome = self._compensate(step, row)
                if outcome != "again":
                    break
            if outcome == _Outcome.WAIT:
                return self.instance.status
            if outcome == _Outcome.GIVE_UP:
                exhausted.append(name)
        self._fence_unfinished()
        if exhausted:
            return self._dead_letter(
                status=Status.FAILED,
                reason=(
                    f"compensation of {', '.join(exhausted)} failed after its retries: "
                    + "; ".join(self.rows[name].error_message for name in exhausted)
                ),
                code="compensation_exhausted",
            )
        now = timezone.now()
        with transaction.atomic():
            hook = resolve_callable(self.definition.on_compensated)
            if hook is not None:
                hook(
                    StepContext(
                        saga_id=str(self.saga_id),
                        step="",
                        key=f"{self.saga_id}:on_compensated",
                        data=self.instance.context,
                        results={},
                        attempt=1,
                        timeout=DEFAULT_STEP_TIMEOUT,
                        business_key=self.instance.business_key,
                        correlation_id=self.instance.correlation_id,
                        extra={
                            "error_code": self.instance.error_code,
                            "error_message": self.instance.error_message,
                        },
                    )
                )
            self._update_saga(
                release=True,
                status=Status.COMPENSATED,
                current_step="",
                completed_at=now,
                wake_at=None,
            )
            self._events(
                SagaEvent(kind=Kind.COMPENSATED, status=Status.COMPENSATED, created_at=now)
            )
        _log_transition(
            logging.INFO,
            self.instance,
            "saga_compensated",
            "compensated",
            "saga %s compensated",
            self.saga_id,
            started_at=self.instance.created_at,
            error_code=self.instance.error_code,
        )
        return Status.COMPENSATED

    def _compensate(self, step: Step, row: SagaStep) -> str:
        attempt = row.compensation_attempts + 1
        timezone.now()
        clock = time.monotonic()
        ctx = self._context(step, attempt)
        # A compensation may record why it undoes (an order cancelled "card declined").
        ctx.extra.update(
            error_code=self.instance.error_code, error_message=self.instance.error_message
        )
        compensate = step.compensate_fn()
        assert compensate is not None
        try:
            with transaction.atomic():
                # The row lock serialises this compensation with a late action on the step.
                SagaStep.objects.select_for_update().filter(pk=row.pk).first()
                fault_point(f"{step.name}.before_compensate")
                with _time_limit(step.timeout):
                    compensate(ctx)
                if time.monotonic() - clock > step.timeout:
                    raise StepTimeout(f"compensation ran past its {step.timeout:g} s timeout")
                now = timezone.now()
                fields = {
                    "status": StepStatus.COMPENSATED,
                    "compensation_status": Comp.COMPENSATED,
                    "compensation_attempts": attempt,
                    "compensated_at": now,
                    "next_attempt_at": None,
                }
                SagaStep.objects.filter(pk=row.pk).update(**fields)
                self._events(
                    SagaEvent(
                        kind=Kind.STEP_COMPENSATED,
                        step=step.name,
                        attempt=attempt,
                        detail={"duration_ms": int((time.monotonic() - clock) * 1000)},
                        created_at=now,
                    )
                )
                self._update_saga(current_step=step.name)
            for name, value in fields.items():
                setattr(row, name, value)
            fault_point(f"{step.name}.after_compensate")
            _log_transition(
                logging.INFO,
                self.instance,
                "step_compensated",
                "compensated",
                "saga %s step %s compensated",
                self.saga_id,
                step.name,
                step=step.name,
                attempt=attempt,
                duration_ms=int((time.monotonic() - clock) * 1000),
            )
            return _Outcome.DONE
        except LeaseLost:
            raise
        except Exception as error:
            return self._compensation_failed(step, row, attempt, error)

    def _compensation_failed(
        self, step: Step, row: SagaStep, attempt: int, error: BaseException
    ) -> str:
        failure = _Failure.of(error)
        policy = step.compensation_retry
        # A compensation must eventually happen: business errors are retried here too,
        # since the alternative is an operator.
        retryable = attempt < policy.max_attempts
        now = timezone.now()
        delay = policy.delay_after(attempt) if retryable else 0.0
        next_at = now + timedelta(seconds=delay) if retryable and delay > 0 else None
        fields = {
            "compensation_status": Comp.COMPENSATING if retryable else Comp.FAILED,
            "compensation_attempts": attempt,
            "error_type": f"{type(error).__module__}.{type(error).__qualname__}"[:200],
            "error_code": failure.code[:100],
            "error_message": failure.message,
            "error_traceback": failure.traceback,
            "next_attempt_at": next_at,
        }
        events = [
            SagaEvent(
                kind=Kind.COMPENSATION_FAILED,
                step=step.name,
                attempt=attempt,
                reason=failure.message[:2000],
                detail={"code": failure.code, "final": not retryable},
                created_at=now,
            )
        ]
        if retryable:
            events.append(_retry_event(step.name, attempt, delay, compensation=True))
        with transaction.atomic():
            SagaStep.objects.filter(pk=row.pk).update(**fields)
            for name, value in fields.items():
                setattr(row, name, value)
            self._events(*events)
            if next_at is not None:
                self._update_saga(release=True, wake_at=next_at, current_step=step.name)
            else:
                self._update_saga(current_step=step.name)
        _log_transition(
            logging.WARNING,
            self.instance,
            "compensation_failed",
            "compensating" if retryable else "failed",
            "saga %s compensation of %s attempt %s failed: %s",
            self.saga_id,
            step.name,
            attempt,
            failure.message,
            step=step.name,
            attempt=attempt,
            retry=retryable,
            delay_seconds=round(delay, 3),
            error_code=failure.code,
        )
        if not retryable:
            return _Outcome.GIVE_UP
        return _Outcome.WAIT if next_at is not None else "again"

    def _fence_unfinished(self) -> None:
        """Local steps that failed never took effect: record their compensation as empty, so
        an action that still arrives for them is refused."""
        unfinished = [
            row
            for name, row in self.rows.items()
            if row.status in (StepStatus.FAILED, StepStatus.EXECUTING, StepStatus.PENDING)
            and row.compensation_status == Comp.NONE
            and not self.definition.step(name).remote
        ]
        if not unfinished:
            return
        now = timezone.now()
        with transaction.atomic():
            for row in unfinished:
                fenced = SagaStep.objects.filter(pk=row.pk, compensation_status=Comp.NONE).exclude(
                    status=StepStatus.COMPLETED
                )
                if fenced.update(compensation_status=Comp.EMPTY, compensated_at=now):
                    row.compensation_status = Comp.EMPTY
                    _log_transition(
                        logging.INFO,
                        self.instance,
                        "compensation_empty",
                        "empty",
                        "saga %s step %s never took effect: nothing to compensate",
                        self.saga_id,
                        row.name,
                        step=row.name,
                        attempt=row.attempts,
                    )
                    self._events(
                        SagaEvent(
                            kind=Kind.COMPENSATION_EMPTY,
                            step=row.name,
                            reason="the action never took effect; nothing to undo",
                            created_at=now,
                        )
                    )
            self._update_saga()

    def _dead_letter(self, *, status: str, reason: str, code: str) -> str:
        now = timezone.now()
        with transaction.atomic():
            self._update_saga(
                release=True,
                status=status,
                error_code=code[:100],
                error_message=reason,
                dead_lettered_at=now,
                dead_letter_reason=reason,
                completed_at=now,
                wake_at=None,
            )
            self._events(
                SagaEvent(kind=Kind.FAILED, status=status, reason=reason, created_at=now),
                SagaEvent(kind=Kind.DEAD_LETTERED, reason=reason, created_at=now),
            )
            saga_id = self.saga_id
            transaction.on_commit(lambda: dead_letter_index_add(saga_id))
        _log_transition(
            logging.ERROR,
            self.instance,
            "saga_failed",
            status.lower(),
            "saga %s dead-lettered: %s",
            self.saga_id,
            reason,
            started_at=self.instance.created_at,
            error_code=code,
        )
        return status


# --- Waking delayed sagas and recovering lost ones ---------------------------------------


def sagas_wake_due(*, limit: int = 100) -> list[str]:
    """Hand sagas whose delayed retry is due to the workers. Each due saga is claimed by a
    compare-and-set on ``wake_at``, so concurrent timers enqueue it once."""
    now = timezone.now()
    due = list(
        SagaInstance.objects.filter(wake_at__lte=now, status__in=SagaInstance.ACTIVE)
        .order_by("wake_at")
        .values_list("pk", "priority", "wake_at")[:limit]
    )
    woken = []
    for pk, priority, wake_at in due:
        if SagaInstance.objects.filter(pk=pk, wake_at=wake_at).update(wake_at=None):
            try:
                enqueue_run(pk, priority)
            except Exception:
                # The broker is down: put the wake-up back so the next pass tries again.
                SagaInstance.objects.filter(pk=pk, wake_at__isnull=True).update(wake_at=wake_at)
                raise
            woken.append(str(pk))
    return woken


def sagas_recover(*, limit: int | None = None) -> list[str]:
    """Re-enqueue unfinished sagas that nobody is running. Recovery only enqueues; the lease
    decides who runs, so a saga enqueued twice still runs once.

    - Lease expired: the worker died (or hung) while running it. This counts as a recovery
      attempt; a saga that keeps killing its workers goes to the dead-letter queue after
      ``MAX_RECOVERY_ATTEMPTS`` instead of being retried forever.
    - No lease, no pending wake-up and no progress for ``STALE_AFTER_SECONDS``: its task was
      lost (a broker outage, a crash between commit and enqueue) or waits in a long queue.
      Enqueueing it again is harmless either way, so it does not count as an attempt.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=saga_setting("STALE_AFTER_SECONDS"))
    batch = limit or saga_setting("RECOVERY_BATCH")
    candidates = list(
        SagaInstance.objects.filter(status__in=SagaInstance.ACTIVE)
        .filter(
            Q(lease_expires_at__lt=now)
            | Q(lease_expires_at__isnull=True, wake_at__isnull=True, updated_at__lt=stale)
        )
        .order_by("updated_at")
        .values_list("pk", "priority", "updated_at", "lease_expires_at", "recovery_attempts")[
            :batch
        ]
    )
    recovered = []
    limit_attempts = saga_setting("MAX_RECOVERY_ATTEMPTS")
    for pk, priority, updated_at, lease_expires_at, attempts in candidates:
        died = lease_expires_at is not None
        if died and attempts >= limit_attempts:
            # A poison saga: every run so far died or lost its lease. An operator decides.
            saga_dead_letter(
                saga_id=pk,
                reason=f"recovery gave up after {attempts} attempts",
                code="recovery_exhausted",
            )
            continue
        # The claim clears the dead lease and touches updated_at: the saga stops being a
        # candidate, and a concurrent scan that read it before finds it changed.
        claimed = SagaInstance.objects.filter(
            pk=pk, updated_at=updated_at, lease_expires_at=lease_expires_at
        ).update(
            updated_at=now,
            lease_owner="",
            lease_expires_at=None,
            recovery_attempts=F("recovery_attempts") + int(died),
        )
        if claimed:
            SagaEvent.objects.create(
                saga_id=pk,
                kind=Kind.RECOVERED,
                detail={"cause": "lease expired" if died else "no progress"},
                created_at=now,
            )
            try:
                enqueue_run(pk, priority)
            except Exception:
                # The broker is down; the saga stays a candidate and the next scan retries.
                logger.exception("recovery could not enqueue saga %s", pk)
                continue
            recovered.append(str(pk))
    return recovered


def sagas_expire(*, limit: int = 200) -> list[str]:
    """Hand sagas past their deadline to a worker now, even when they wait for a later
    retry: the run moves them to TIMEOUT and compensates (or, past the pivot, finishes)."""
    now = timezone.now()
    overdue = list(
        SagaInstance.objects.filter(
            status__in=[Status.STARTED, Status.EXECUTING], deadline__lt=now
        )
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .values_list("pk", "priority", "updated_at")[:limit]
    )
    handed = []
    for pk, priority, updated_at in overdue:
        if SagaInstance.objects.filter(pk=pk, updated_at=updated_at).update(
            wake_at=None, updated_at=now
        ):
            SagaStep.objects.filter(saga_id=pk, next_attempt_at__isnull=False).update(
                next_attempt_at=None
            )
            enqueue_run(pk, priority)
            handed.append(str(pk))
    return handed
