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
import hashlib
import itertools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

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
#
# The hot paths' statements are prepared with SQL ``PREPARE`` once per connection and run as
# ``EXECUTE name(values)``, the values bound on the client as Django binds every ORM statement.
# The driver never prepares anything itself (Django turns that off, and nothing here asks for
# it), so it never answers a rollback with ``DEALLOCATE ALL``: a statement prepared here lives
# as long as its session, rolled-back transactions included. The names a connection has
# prepared are kept on the driver's connection object, so a new connection prepares again.


def _prepared_names(raw: Any) -> dict[str, str]:
    names = getattr(raw, "_l2c_prepared", None)
    if names is None:
        names = raw._l2c_prepared = {}
    return names


@functools.cache
def _statement_name(sql: str) -> str:
    return f"l2c_{hashlib.sha1(sql.encode()).hexdigest()[:16]}"


@functools.cache
def _numbered(sql: str) -> str:
    """The statement as PREPARE takes it: ``%s`` as ``$1``, ``$2``, ... and ``%%`` as ``%``."""
    numbers = itertools.count(1)
    return re.sub(r"%[s%]", lambda m: "%" if m[0] == "%%" else f"${next(numbers)}", sql)


@functools.cache
def _execute_sql(name: str, count: int, commit: bool = False) -> str:
    values = f"({', '.join(['%s'] * count)})" if count else ""
    return f"EXECUTE {name}{values}" + ("; COMMIT" if commit else "")


def _prepared(db: Any, sql: str) -> str:
    """The name ``sql`` is prepared under on ``db``'s connection, preparing it the first
    time (in the current transaction, if any: PREPARE outlives its rollback)."""
    raw = db.connection
    names = _prepared_names(raw)
    name = names.get(sql)
    if name is None:
        name = _statement_name(sql)
        with db.wrap_database_errors:
            raw.execute(f"PREPARE {name} AS {_numbered(sql)}")
        names[sql] = name
    return name


def execute(sql: str, params: Sequence[Any], *, db: Any = None) -> Any:
    """Run one of the hot paths' plain statements and return the cursor to read it from
    (use it in a ``with`` block).

    On PostgreSQL the statement goes straight to the driver, prepared once per connection
    (planning a multi-table CTE or an update checked against the saga table's partial
    indexes costs the server as much as running it), without the cost of Django's cursor (a
    hot path runs several per saga). Errors are Django's, a broken transaction is refused,
    and captured queries and execute wrappers see the statement itself (run unprepared). A
    proxy that pools transactions rather than sessions does not keep prepared statements:
    set ``DATABASE_PREPARED_STATEMENTS=false`` there. Other databases run it through Django's
    cursor. ``db``: a connection other than the default.
    """
    if db is None:
        db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        cursor = db.cursor()
        cursor.execute(sql, params)
        return cursor
    db.close_if_health_check_failed()
    db.ensure_connection()
    # The connection's own cursor: it binds on the client and counts in the metrics.
    cursor = db.connection.cursor()
    if db.queries_logged or db.execute_wrappers:
        return _execute_observed(db, cursor, sql, params)
    db.validate_no_broken_transaction()
    if getattr(settings, "L2C_PREPARED_STATEMENTS", True):
        sql = _execute_sql(_prepared(db, sql), len(params))
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


def execute_and_commit(sql: str, params: Sequence[Any]) -> Any | None:
    """Run the last statement of a transaction and its COMMIT in one round trip, and return
    the cursor to read the statement from; None when that cannot be done here, and then the
    caller runs ``execute`` and the transaction commits as usual.

    A round trip costs more than most statements here (the client's and the server's CPU,
    not only the wait), and each saga step is a transaction of its own. The prepared
    statement goes out as ``EXECUTE ...; COMMIT``, one simple query. (In psycopg's pipeline
    mode the same fold cost more CPU than the round trip it saves.)

    Only on PostgreSQL with prepared statements on, in the outermost ``atomic`` block
    entered from autocommit (never in a caller's transaction or a savepoint), and not while
    queries are captured or wrapped. The block then ends with nothing left to commit
    (psycopg skips the COMMIT of a connection with no open transaction) and runs its
    on-commit callbacks as always. An error (a unique violation) stops the query before its
    COMMIT: the transaction is left failed and uncommitted, and the block rolls it back. Run
    nothing after it in the block: that would be a transaction of its own.
    """
    db = connections[DEFAULT_DB_ALIAS]
    if (
        db.vendor != "postgresql"
        or not getattr(settings, "L2C_PREPARED_STATEMENTS", True)
        or len(db.atomic_blocks) != 1
        or db.savepoint_ids
        or not db.commit_on_exit
        or db.needs_rollback
        or db.queries_logged
        or db.execute_wrappers
    ):
        return None
    db.validate_no_broken_transaction()
    name = _prepared(db, sql)
    cursor = db.connection.cursor()
    with db.wrap_database_errors:
        cursor.execute(_execute_sql(name, len(params), commit=True), params)
    return cursor
