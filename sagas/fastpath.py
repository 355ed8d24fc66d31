"""Single-round-trip bookkeeping for the hot path on PostgreSQL.

On the happy path each step adds one statement to the step's own transaction: the step row
and its history event go in one data-modifying CTE (with the saga row too, for the last
step). Other databases (SQLite, the embedded default) take the equivalent ORM path in
``sagas.engine``.

The statements are built once per shape and cached, and rows come back as model instances
built straight from their columns: this module runs several times per saga, so its own
Python cost is part of every saga's.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.db.models import Model
from django.db.models.base import ModelState

from l2c.db import execute, execute_and_commit, fetch_instances, returning
from sagas.models import SagaEvent, SagaInstance, SagaStep

_STEP_COLUMNS = (
    "saga_id, name, index, status, compensation_status, attempts, compensation_attempts,"
    " output, error_type, error_code, error_message, error_traceback, started_at,"
    " finished_at, duration_ms, next_attempt_at, compensated_at"
)
_EVENT_COLUMNS = "saga_id, kind, step, attempt, status, actor, reason, detail, created_at"
_EVENT_ROW = "(%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)"

M = TypeVar("M", bound=Model)


class Event(NamedTuple):
    """A history event on its way to the database (cheaper than a SagaEvent instance)."""

    kind: str
    step: str = ""
    attempt: int | None = None
    status: str = ""
    actor: str = ""
    reason: str = ""
    detail: dict[str, Any] | None = None
    created_at: datetime | None = None

    def as_model(self, saga_id: Any) -> SagaEvent:
        return SagaEvent(saga_id=saga_id, **{**self._asdict(), "detail": self.detail or {}})


def enabled() -> bool:
    return connection.vendor == "postgresql"


_encoder = DjangoJSONEncoder()


def _dumps(value: Any) -> str | None:
    return None if value is None else _encoder.encode(value)


def _event_params(saga_id: Any, event: Event | SagaEvent) -> list[Any]:
    """The values of one event, in the order of _EVENT_COLUMNS."""
    return [
        saga_id,
        event.kind,
        event.step,
        event.attempt,
        event.status,
        event.actor,
        event.reason,
        _dumps(event.detail or {}),
        event.created_at,
    ]


# One event row with its types spelled out, for VALUES that do not feed an INSERT directly.
_TYPED_EVENT_ROW = (
    "(%s::uuid, %s::varchar, %s::varchar, %s::integer, %s::varchar, %s::varchar, %s::text,"
    " %s::jsonb, %s::timestamptz, {always})"
)


@functools.cache
def _step_sql(events: int, finish: tuple[str, ...]) -> str:
    step = (
        f"WITH s AS (INSERT INTO {SagaStep._meta.db_table} ({_STEP_COLUMNS}) VALUES"
        " (%s, %s, %s, 'COMPLETED', 'NONE', %s, 0, %s::jsonb, '', '', '', '', %s, %s, %s,"
        " NULL, NULL) RETURNING id),"
    )
    if not finish:
        rows = ", ".join([_EVENT_ROW] * events)
        return (
            f"{step} e AS (INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS})"
            f" VALUES {rows}) SELECT id, true FROM s"
        )
    # The step's own event is written whatever happens to the saga row; the saga's events
    # (the ones after it) only when the lease still held and the saga row was finished.
    # One INSERT keeps them in order in the history.
    assignments = ", ".join(f"{column} = %s" for column in finish)
    rows = ", ".join(
        _TYPED_EVENT_ROW.format(always="true" if i == 0 else "false") for i in range(events)
    )
    return (
        f"{step} u AS (UPDATE {SagaInstance._meta.db_table} SET {assignments}"
        " WHERE id = %s AND lease_owner = %s RETURNING 1),"
        f" e AS (INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS})"
        f" SELECT {_EVENT_COLUMNS} FROM (VALUES {rows}) AS v ({_EVENT_COLUMNS}, always)"
        " WHERE v.always OR EXISTS (SELECT 1 FROM u))"
        " SELECT id, EXISTS (SELECT 1 FROM u) FROM s"
    )


def step_insert_completed(
    *,
    saga_id: uuid.UUID,
    name: str,
    index: int,
    attempts: int,
    output: Any,
    started_at: datetime,
    finished_at: datetime,
    duration_ms: int,
    events: Sequence[Event],
    finish: dict[str, Any] | None = None,
    owner: str = "",
    commit: bool = False,
) -> tuple[int, bool, bool]:
    """Insert a COMPLETED step row and its events in one statement; with ``finish``, also
    update the saga row with those fields, fenced on the lease ``owner``, and write the
    events after the first only if it was. Returns the row id, whether the saga row was
    updated, and whether the transaction was committed. A second completion of the same step
    raises IntegrityError (unique saga + name). ``commit``: the statement ends the step's
    transaction, so its COMMIT may go with it (``l2c.db.execute_and_commit``); the step is
    then committed even when the saga row was not updated, and whoever holds the lease now
    finds it done."""
    params = [saga_id, name, index, attempts, _dumps(output), started_at, finished_at, duration_ms]
    if finish:
        params.extend(finish.values())
        params.append(saga_id)
        params.append(owner)
    for event in events:
        params.extend(_event_params(saga_id, event))
    sql = _step_sql(len(events), tuple(finish or ()))
    folded = execute_and_commit(sql, params) if commit else None
    with folded or execute(sql, params) as cursor:
        pk, done = cursor.fetchone()
        return pk, done, folded is not None


# --- A new saga's first run ------------------------------------------------------------------
#
# A new saga's task carries the row its start wrote (``saga_snapshot``), so its first run needs
# neither a read nor a lease statement of its own: the first step's bookkeeping statement also
# takes the lease, on the condition that the saga is still new and nobody holds it. When that
# condition fails, ``l2c_saga_not_new`` (migration sagas 0005) stops the statement, so neither
# it nor the COMMIT sent after it takes effect, and the step's writes roll back with it.


# What a first run needs of the row, in this order. Plain values: the task is pickled and
# signed at the start and unpickled twice on its way through the cluster, and UUIDs and
# datetimes cost several times what strings do there.
_SNAPSHOT = ("definition", "version", "business_key", "correlation_id", "priority", "context")


def saga_snapshot(instance: SagaInstance) -> tuple[Any, ...]:
    """The saga row as its start wrote it, for its task."""
    values = tuple(instance.__dict__[name] for name in _SNAPSHOT)
    return (*values, instance.deadline.isoformat(), instance.created_at.isoformat())


def first_run_instance(
    saga_id: Any, snapshot: tuple[Any, ...], *, owner: str, expires_at: datetime, now: datetime
) -> SagaInstance | None:
    """The saga as it is once its first step has committed and taken the lease; None when
    ``snapshot`` is not one (a task enqueued by another version of this code)."""
    if not isinstance(snapshot, tuple | list) or len(snapshot) != len(_SNAPSHOT) + 2:
        return None
    return _built(
        SagaInstance,
        dict(zip(_SNAPSHOT, snapshot[: len(_SNAPSHOT)], strict=True)),
        id=uuid.UUID(str(saga_id)),
        deadline=datetime.fromisoformat(snapshot[-2]),
        created_at=datetime.fromisoformat(snapshot[-1]),
        status=SagaInstance.Status.EXECUTING,
        lease_owner=owner,
        lease_expires_at=expires_at,
        runs=1,
        updated_at=now,
    )


@functools.cache
def _first_step_sql() -> str:
    return (
        f"WITH l AS (UPDATE {SagaInstance._meta.db_table} SET lease_owner = %s,"
        " lease_expires_at = %s, runs = 1, updated_at = %s, status = 'EXECUTING'"
        " WHERE id = %s AND status = 'STARTED' AND runs = 0 AND lease_expires_at IS NULL"
        " RETURNING id),"
        f" s AS (INSERT INTO {SagaStep._meta.db_table} ({_STEP_COLUMNS})"
        " SELECT l.id, %s, %s, 'COMPLETED', 'NONE', %s, 0, %s::jsonb, '', '', '', '', %s, %s,"
        " %s, NULL, NULL FROM l RETURNING id),"
        f" e AS (INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS})"
        " SELECT l.id, %s, %s, %s, %s, %s, %s, %s::jsonb, %s FROM l)"
        # Evaluated only when the lease was not taken (a volatile function is never folded).
        " SELECT (SELECT id FROM s),"
        " CASE WHEN EXISTS (SELECT 1 FROM l) THEN 0 ELSE l2c_saga_not_new(%s) END"
    )


def first_step_insert_completed(
    *,
    saga_id: uuid.UUID,
    owner: str,
    expires_at: datetime,
    now: datetime,
    name: str,
    index: int,
    attempts: int,
    output: Any,
    started_at: datetime,
    finished_at: datetime,
    duration_ms: int,
    event: Event,
) -> int:
    """Take the lease of a new saga and insert its first COMPLETED step row and event, in
    one statement sent with the step's COMMIT where it can be. Returns the row id. Raises (a
    DatabaseError) when the saga is no longer new or its lease is held: nothing is written."""
    params = [owner, expires_at, now, saga_id, name, index, attempts, _dumps(output)]
    params += [started_at, finished_at, duration_ms, *_event_params(None, event)[1:], saga_id]
    sql = _first_step_sql()
    with execute_and_commit(sql, params) or execute(sql, params) as cursor:
        return cursor.fetchone()[0]


def saga_finish(
    *,
    saga_id: uuid.UUID,
    owner: str,
    fields: dict[str, Any],
    events: Sequence[Event],
) -> bool:
    """Update the saga row (fenced on the lease owner) and append events, in one statement.
    False when the lease was lost: nothing is written."""
    table = SagaInstance._meta.db_table
    assignments = ", ".join(f"{column} = %s" for column in fields)
    select_one = (
        "SELECT %s::uuid, %s::varchar, %s::varchar, %s::integer, %s::varchar, %s::varchar,"
        " %s::text, %s::jsonb, %s::timestamptz"
    )
    event_params = [value for event in events for value in _event_params(saga_id, event)]
    selects = " UNION ALL ".join([select_one] * len(events))
    sql = (
        f"WITH u AS (UPDATE {table} SET {assignments} WHERE id = %s AND lease_owner = %s"
        " RETURNING id)"
        f" INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS})"
        f" SELECT * FROM ({selects}) AS ev WHERE EXISTS (SELECT 1 FROM u)"
    )
    params = [*fields.values(), saga_id, owner, *event_params]
    with execute(sql, params) as cursor:
        return cursor.rowcount > 0


# The columns a new saga row sets; the others are NULL. Kept in step with the model by
# ``_check_insert_columns`` (every NOT NULL column must be here).
_SAGA_INSERT = (
    "id, definition, version, business_key, correlation_id, dedup_key, status, priority,"
    " tags, context, current_step, deadline, lease_owner, runs, recovery_attempts,"
    " error_code, error_message, created_at, updated_at, dead_letter_reason, resolved_by,"
    " resolution"
)


@functools.cache
def _saga_insert_sql() -> str:
    _check_insert_columns()
    return (
        f"WITH s AS (INSERT INTO {SagaInstance._meta.db_table} ({_SAGA_INSERT}) VALUES"
        " (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, '', %s, '', 0, 0, '', '',"
        " %s, %s, '', '', '')"
        # A taken dedup_key inserts nothing (no error, so no savepoint is needed to go on).
        " ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING RETURNING id)"
        f" INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS})"
        " SELECT s.id, %s, %s, %s, %s, %s, %s, %s::jsonb, %s FROM s"
    )


def _check_insert_columns() -> None:
    listed = {column.strip() for column in _SAGA_INSERT.split(",")}
    required = {f.column for f in SagaInstance._meta.concrete_fields if not f.null}
    missing = required - listed
    if missing:
        raise RuntimeError(f"saga_insert does not set the NOT NULL columns {sorted(missing)}")


def saga_insert(*, instance: SagaInstance, event: Event) -> bool:
    """Insert a new saga row and its first event in one statement (one round trip, atomic
    on its own). False, with nothing written, when the dedup_key is taken."""
    params = [
        instance.pk,
        instance.definition,
        instance.version,
        instance.business_key,
        instance.correlation_id,
        instance.dedup_key,
        instance.status,
        instance.priority,
        _dumps(instance.tags),
        _dumps(instance.context),
        instance.deadline,
        instance.created_at,
        instance.updated_at,
        *_event_params(None, event)[1:],
    ]
    with execute(_saga_insert_sql(), params) as cursor:
        return cursor.rowcount == 1


@functools.cache
def _lease_sql() -> str:
    table = SagaInstance._meta.db_table
    active = ", ".join(f"'{status}'" for status in SagaInstance.ACTIVE)
    return (
        f"UPDATE {table} SET lease_owner = %s, lease_expires_at = %s, runs = runs + 1,"
        " updated_at = %s,"
        " status = CASE WHEN status = 'STARTED' THEN 'EXECUTING' ELSE status END"
        f" WHERE id = %s AND status IN ({active})"
        " AND (lease_expires_at IS NULL OR lease_expires_at < %s)"
        f" {returning(SagaInstance)}"
    )


def lease_take(
    *, saga_id: Any, owner: str, expires_at: datetime, now: datetime
) -> SagaInstance | None:
    """Take the lease and read the saga in one statement (UPDATE ... RETURNING); None when
    it is finished or somebody else holds it. A new saga moves to EXECUTING on the way."""
    rows = fetch_instances(SagaInstance, _lease_sql(), [owner, expires_at, now, saga_id, now])
    return rows[0] if rows else None


@functools.cache
def _defaults(model: type[Model]) -> dict[str, Any]:
    return {f.attname: f.get_default() for f in model._meta.concrete_fields}


def _built(model: type[M], values: dict[str, Any], **more: Any) -> M:
    """An instance of ``model`` from its field defaults, then ``values`` and ``more``, in the
    state ``Model.from_db`` leaves an instance in. Built without ``__init__`` (a fifth of a
    step's bookkeeping cost otherwise); these models have no init signal receivers and no
    fields that need one."""
    instance = model.__new__(model)
    instance.__dict__.update(_defaults(model))
    instance.__dict__.update(values)
    instance.__dict__.update(more)
    instance._state = ModelState()
    instance._state.adding = False
    instance._state.db = connection.alias
    return instance


def step_row(**values: Any) -> SagaStep:
    """The SagaStep instance of a row just written by one of these statements."""
    return _built(SagaStep, values)


@functools.cache
def _executing_sql() -> str:
    return (
        f"WITH u AS (UPDATE {SagaInstance._meta.db_table} SET current_step = %s,"
        " updated_at = %s, lease_expires_at = %s WHERE id = %s AND lease_owner = %s"
        " RETURNING id),"
        f" s AS (INSERT INTO {SagaStep._meta.db_table} ({_STEP_COLUMNS})"
        " SELECT u.id, %s, %s, 'EXECUTING', 'NONE', %s, 0, NULL, '', '', '', '', %s, NULL,"
        " NULL, NULL, NULL FROM u RETURNING id),"
        f" e AS (INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS})"
        " SELECT u.id, %s, %s, %s, %s, %s, %s, %s::jsonb, %s FROM u)"
        " SELECT (SELECT id FROM s), EXISTS (SELECT 1 FROM u)"
    )


def step_insert_executing(
    *,
    saga_id: uuid.UUID,
    owner: str,
    name: str,
    index: int,
    attempts: int,
    started_at: datetime,
    lease_expires_at: datetime,
    event: Event,
) -> int | None:
    """Before a remote call, in one statement: the EXECUTING step row, its event, and the
    saga row's current step and renewed lease (fenced on ``owner``). Returns the row id, or
    None when the lease was lost (nothing written). A row already there raises
    IntegrityError (unique saga + name)."""
    params = [
        name,
        started_at,
        lease_expires_at,
        saga_id,
        owner,
        name,
        index,
        attempts,
        started_at,
    ]
    params.extend(_event_params(saga_id, event)[1:])
    with execute(_executing_sql(), params) as cursor:
        pk, owned = cursor.fetchone()
    return pk if owned else None


@functools.cache
def _complete_existing_sql() -> str:
    return (
        f"WITH s AS (UPDATE {SagaStep._meta.db_table} SET status = 'COMPLETED',"
        " attempts = %s, output = %s::jsonb, started_at = %s, finished_at = %s,"
        " duration_ms = %s, next_attempt_at = NULL"
        " WHERE id = %s AND status IN ('PENDING', 'FAILED', 'EXECUTING')"
        " AND compensation_status = 'NONE' RETURNING saga_id),"
        f" e AS (INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS})"
        " SELECT s.saga_id, %s, %s, %s, %s, %s, %s, %s::jsonb, %s FROM s)"
        " SELECT count(*) FROM s"
    )


def step_update_completed(
    *,
    pk: int,
    attempts: int,
    output: Any,
    started_at: datetime,
    finished_at: datetime,
    duration_ms: int,
    event: Event,
) -> bool:
    """Move an existing step row (a remote step marked EXECUTING, or one that failed
    before) to COMPLETED and append its event, in one statement. False when the row was
    compensated or completed meanwhile: nothing is written."""
    params = [attempts, _dumps(output), started_at, finished_at, duration_ms, pk]
    params.extend(_event_params(None, event)[1:])
    with execute(_complete_existing_sql(), params) as cursor:
        return cursor.fetchone()[0] > 0
