"""Single-round-trip bookkeeping for the hot path on PostgreSQL.

On the happy path each step adds one statement to the step's own transaction: the step row
and its two history events go in one data-modifying CTE. Other databases (SQLite, the
embedded default) take the equivalent ORM path in ``sagas.engine``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection

from sagas.models import SagaEvent, SagaStep

_STEP_COLUMNS = (
    "saga_id, name, index, status, compensation_status, attempts, compensation_attempts,"
    " output, error_type, error_code, error_message, error_traceback, started_at,"
    " finished_at, duration_ms, next_attempt_at, compensated_at"
)
_EVENT_COLUMNS = "saga_id, kind, step, attempt, status, actor, reason, detail, created_at"


def enabled() -> bool:
    return connection.vendor == "postgresql"


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, cls=DjangoJSONEncoder)


def _event_params(saga_id: Any, event: SagaEvent) -> list[Any]:
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


def _event_values(saga_id: uuid.UUID, events: Sequence[SagaEvent]) -> tuple[str, list[Any]]:
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)"] * len(events))
    return rows, [value for event in events for value in _event_params(saga_id, event)]


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
    events: Sequence[SagaEvent],
    finish: dict[str, Any] | None = None,
    owner: str = "",
) -> tuple[int, bool]:
    """Insert a COMPLETED step row and its events in one statement; with ``finish``, also
    update the saga row with those fields, fenced on the lease ``owner``. Returns the row id
    and whether the saga row was updated (the caller rolls back when it was not).
    A second completion of the same step raises IntegrityError (unique saga + name)."""
    from sagas.models import SagaInstance

    event_rows, event_params = _event_values(saga_id, events)
    finish_sql, finish_params, finished = "", [], "true"
    if finish:
        assignments = ", ".join(f"{column} = %s" for column in finish)
        finish_sql = (
            f" u AS (UPDATE {SagaInstance._meta.db_table} SET {assignments}"
            " WHERE id = %s AND lease_owner = %s RETURNING 1),"
        )
        finish_params = [*finish.values(), saga_id, owner]
        finished = "EXISTS (SELECT 1 FROM u)"
    sql = (
        f"WITH s AS (INSERT INTO {SagaStep._meta.db_table} ({_STEP_COLUMNS}) VALUES"
        " (%s, %s, %s, 'COMPLETED', 'NONE', %s, 0, %s::jsonb, '', '', '', '', %s, %s, %s,"
        " NULL, NULL) RETURNING id),"
        f"{finish_sql}"
        f" e AS (INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS}) VALUES {event_rows})"
        f" SELECT id, {finished} FROM s"
    )
    params = [
        saga_id,
        name,
        index,
        attempts,
        _dumps(output),
        started_at,
        finished_at,
        duration_ms,
        *finish_params,
        *event_params,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        pk, done = cursor.fetchone()
        return pk, done


def saga_finish(
    *,
    saga_id: uuid.UUID,
    owner: str,
    fields: dict[str, Any],
    events: Sequence[SagaEvent],
) -> bool:
    """Update the saga row (fenced on the lease owner) and append events, in one statement.
    False when the lease was lost: nothing is written."""
    from sagas.models import SagaInstance

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
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount > 0


def saga_insert(*, instance: Any, event: SagaEvent) -> None:
    """Insert a new saga row and its first event in one statement (one round trip, atomic
    on its own). A taken dedup_key raises IntegrityError."""
    from sagas.models import SagaInstance

    fields = [f for f in SagaInstance._meta.concrete_fields]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    values = [f.get_db_prep_save(getattr(instance, f.attname), connection) for f in fields]
    sql = (
        f"WITH s AS (INSERT INTO {SagaInstance._meta.db_table} ({columns})"
        f" VALUES ({placeholders}) RETURNING id)"
        f" INSERT INTO {SagaEvent._meta.db_table} ({_EVENT_COLUMNS})"
        " SELECT s.id, %s, %s, %s, %s, %s, %s, %s::jsonb, %s FROM s"
    )
    params = [*values, *_event_params(None, event)[1:]]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def lease_take(*, saga_id: Any, owner: str, expires_at: datetime, now: datetime) -> Any:
    """Take the lease and read the saga in one statement (UPDATE ... RETURNING); None when
    it is finished or somebody else holds it. A new saga moves to EXECUTING on the way."""
    from sagas.models import SagaInstance

    table = SagaInstance._meta.db_table
    active = ", ".join(f"'{status}'" for status in SagaInstance.ACTIVE)
    sql = (
        f"UPDATE {table} SET lease_owner = %s, lease_expires_at = %s, runs = runs + 1,"
        " updated_at = %s,"
        " status = CASE WHEN status = 'STARTED' THEN 'EXECUTING' ELSE status END"
        f" WHERE id = %s AND status IN ({active})"
        " AND (lease_expires_at IS NULL OR lease_expires_at < %s)"
        f" RETURNING {table}.*"
    )
    rows = list(SagaInstance.objects.raw(sql, [owner, expires_at, now, saga_id, now]))
    return rows[0] if rows else None
