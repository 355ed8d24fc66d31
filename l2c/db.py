"""Transactions for domain services: a savepoint only where somebody can use it.

A service nested in its caller's transaction normally gets a savepoint, so that a caller who
catches its error can go on. A saga step's transaction is different: whatever fails inside
it fails the whole step, which rolls back, and the engine never goes on in it. There a
savepoint is two round trips (SAVEPOINT, RELEASE) that buy nothing, and a step calls several
services; ``step_transaction`` marks the connection and ``savepoint``/``atomic`` skip them.
``no_savepoints`` does the same for any block whose errors always leave it (order_submit).

The hot paths also run some plain statements (``UPDATE ... RETURNING`` that moves and reads a
row at once); the helpers at the end run them prepared, straight through the driver, and
read their rows the way the ORM would.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=models.Model)
_MARK = "l2c_in_step_transaction"


@contextlib.contextmanager
def no_savepoints() -> Iterator[None]:
    """Inside a transaction block that nobody continues after an error (its exception leaves
    the block, which rolls back), the services called need no savepoints of their own."""
    connection = transaction.get_connection()
    before = getattr(connection, _MARK, False)
    setattr(connection, _MARK, True)
    try:
        yield
    finally:
        setattr(connection, _MARK, before)


@contextlib.contextmanager
def step_transaction() -> Iterator[None]:
    """``transaction.atomic()`` for a saga step's action and its bookkeeping."""
    with transaction.atomic(), no_savepoints():
        yield


def in_step_transaction() -> bool:
    return getattr(transaction.get_connection(), _MARK, False)


def savepoint() -> contextlib.AbstractContextManager[Any]:
    """A guard around one statement that may fail (an insert on a unique key): a savepoint
    inside a transaction, nothing in autocommit (the statement is its own transaction, and a
    failed one leaves nothing behind), nothing inside a saga step's transaction."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        return contextlib.nullcontext()
    return transaction.atomic(savepoint=not in_step_transaction())


def atomic(func: F) -> F:
    """``@transaction.atomic`` for a domain service, without the savepoint inside a saga
    step's transaction."""

    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        with transaction.atomic(savepoint=not in_step_transaction()):
            return func(*args, **kwargs)

    return inner  # type: ignore[return-value]


# --- Rows of raw statements -----------------------------------------------------------------


def _column_list(model: type[models.Model], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(
        f"{prefix}{connection.ops.quote_name(f.column)}" for f in model._meta.concrete_fields
    )


@functools.cache
def _row_shape(model: type[models.Model]) -> tuple[str, tuple[str, ...], tuple[Any, ...]]:
    fields = model._meta.concrete_fields
    attnames = tuple(f.attname for f in fields)
    # What the ORM does to each column on the way out: the backend's converters (SQLite
    # returns dates as text) and the field's own ``from_db_value`` (JSON text to Python).
    converters = []
    for field in fields:
        column = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        converters.append(tuple((convert, column) for convert in found))
    return _column_list(model), attnames, tuple(converters)


def _converted(value: Any, converters: tuple[tuple[Any, Any], ...]) -> Any:
    for convert, column in converters:
        value = convert(value, column, connection)
    return value


def returning(model: type[models.Model]) -> str:
    """``RETURNING`` with every column of ``model``, in the order ``fetch_instances`` reads."""
    return f"RETURNING {_row_shape(model)[0]}"


def select_columns(model: type[models.Model], alias: str) -> str:
    """Every column of ``model`` qualified with ``alias``, in the order ``instance_from_row``
    reads them: for a SELECT that joins several tables."""
    return _column_list(model, alias)


def db_value(model: type[models.Model], field: str, value: Any) -> Any:
    """``value`` as the ORM sends it for ``model.field``, for a plain statement's parameter:
    SQLite keeps datetimes as naive UTC text, where its driver alone would add an offset."""
    return model._meta.get_field(field).get_db_prep_value(value, connection)


def instance_from_row(model: type[M], row: Sequence[Any]) -> M:
    """The instance of one row of ``model``'s columns, built as the ORM builds it."""
    _, attnames, converters = _row_shape(model)
    return model.from_db(
        connection.alias,
        attnames,
        [
            _converted(value, found) if found else value
            for found, value in zip(converters, row, strict=True)
        ],
    )


def fetch_instances(model: type[M], sql: str, params: list[Any]) -> list[M]:
    """Run a statement that ends with ``returning(model)`` (an ``UPDATE ... RETURNING`` that
    moves and reads a row in one round trip) and build the instances like the ORM does,
    without ``RawQuerySet``'s per-query column mapping: the hot paths run these per step."""
    with execute(sql, params) as cursor:
        rows = cursor.fetchall()
    return [instance_from_row(model, row) for row in rows]


# --- Prepared statements ----------------------------------------------------------------------


class StatementCursor(psycopg.Cursor):
    """A psycopg cursor that binds values on the server and prepares its statements once per
    connection (``DATABASE_PREPARED_STATEMENTS``, on by default).

    Django turns psycopg's prepared statements off for the whole connection (the connection
    poolers' sake) and binds values in Python; this cursor asks for preparation one
    statement at a time, so the ORM's own statements are left as they are.
    """

    def execute(  # type: ignore[override]
        self, query: Any, params: Any = None, *, prepare: bool | None = None, **kwargs: Any
    ) -> Any:
        if not getattr(settings, "L2C_PREPARED_STATEMENTS", True):
            return super().execute(query, params, prepare=False, **kwargs)
        raw = self.connection
        if raw.prepare_threshold is not None:
            return super().execute(query, params, prepare=True, **kwargs)
        # psycopg prepares only while the connection allows it: allow it for this call.
        raw.prepare_threshold = _ONLY_WHEN_ASKED
        try:
            return super().execute(query, params, prepare=True, **kwargs)
        finally:
            raw.prepare_threshold = None


# Never reached by counting: a statement is prepared because it asks to be.
_ONLY_WHEN_ASKED = 1 << 62


def _statement_cursor(db: Any) -> Any:
    # The project's backend counts these statements in its metrics like the ORM's.
    factory = getattr(db, "statement_cursor_class", StatementCursor)
    return factory(db.connection)


def execute(sql: str, params: Sequence[Any], *, db: Any = None) -> Any:
    """Run one of the hot paths' plain statements and return the cursor to read it from
    (use it in a ``with`` block).

    On PostgreSQL the statement goes straight to the driver: values bound on the server
    and the statement prepared once per connection (planning a multi-table CTE or an update
    checked against the saga table's partial indexes costs the server as much as running
    it), without the cost of Django's cursor (a hot path runs several per saga). Errors are
    Django's, a broken transaction is refused, and captured queries and execute wrappers
    still see the statement. A proxy that pools transactions rather than sessions does not
    keep prepared statements: set ``DATABASE_PREPARED_STATEMENTS=false`` there. Other
    databases run it through Django's cursor. ``db``: a connection other than the default.
    """
    if db is None:
        db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        cursor = db.cursor()
        cursor.execute(sql, params)
        return cursor
    db.close_if_health_check_failed()
    db.ensure_connection()
    cursor = _statement_cursor(db)
    if db.queries_logged or db.execute_wrappers:
        return _execute_observed(db, cursor, sql, params)
    db.validate_no_broken_transaction()
    with db.wrap_database_errors:
        cursor.execute(sql, params)
    return cursor


def _execute_observed(db: Any, cursor: Any, sql: str, params: Sequence[Any]) -> Any:
    """Through Django's cursor wrapper, which calls the execute wrappers, and into the
    captured queries (with the values in, as Django shows its own statements)."""
    wrapped = db.make_cursor(cursor)
    if not db.queries_logged:
        wrapped.execute(sql, params)
        return wrapped
    start = time.monotonic()
    try:
        wrapped.execute(sql, params)
    finally:
        db.queries_log.append(
            {"sql": db.ops.compose_sql(sql, params), "time": f"{time.monotonic() - start:.3f}"}
        )
    return wrapped
