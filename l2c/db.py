"""Transactions for domain services: a savepoint only where somebody can use it.

A service nested in its caller's transaction normally gets a savepoint, so that a caller who
catches its error can go on. A saga step's transaction is different: whatever fails inside
it fails the whole step, which rolls back, and the engine never goes on in it. There a
savepoint is two round trips (SAVEPOINT, RELEASE) that buy nothing, and a step calls several
services; ``step_transaction`` marks the connection and ``savepoint``/``atomic`` skip them.
``no_savepoints`` does the same for any block whose errors always leave it (order_submit).

The hot paths also run some plain statements (``UPDATE ... RETURNING`` that moves and reads a
row at once); the helpers at the end prepare them once per connection, send their values and
read their rows the way the ORM would.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection, models, transaction
from django.db.backends.utils import CursorWrapper

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
    with connection.cursor() as cursor:
        execute(cursor, sql, params)
        rows = cursor.fetchall()
    return [instance_from_row(model, row) for row in rows]


# --- Prepared statements ----------------------------------------------------------------------

# The statements each connection has prepared, by the driver's connection object: a new
# connection (after a restart, or a new one from the pool) has none, and a pooled one keeps
# its own as long as it lives.
_prepared: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


# Name -> statement, for whoever reads a log or a profile of EXECUTEs.
_statements: dict[str, str] = {}


def prepared_sql(name: str) -> str | None:
    """The statement a prepared statement's name stands for (once this process made it)."""
    return _statements.get(name)


@functools.cache
def _prepared_form(sql: str) -> tuple[str, str, str]:
    """The name, ``PREPARE`` and ``EXECUTE`` statements of one ``%s``-style statement."""
    name = "l2c_" + hashlib.sha1(sql.encode(), usedforsecurity=False).hexdigest()[:16]
    _statements[name] = sql
    parts = sql.replace("%%", "\0").split("%s")
    body = "".join(
        part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, start=1)
    ).replace("\0", "%")
    count = len(parts) - 1
    arguments = f"({', '.join(['%s'] * count)})" if count else ""
    return name, f"PREPARE {name} AS {body}", f"EXECUTE {name}{arguments}"


def execute(cursor: CursorWrapper, sql: str, params: Sequence[Any]) -> None:
    """Run one of the hot paths' plain statements, on PostgreSQL prepared once per connection.

    These statements are planned each time otherwise (Django's driver binds values on the
    client and never prepares), and for a multi-table CTE or an update checked against the
    saga table's partial indexes the plan costs the server as much as the run. ``PREPARE``
    and ``EXECUTE`` are plain SQL, so values are still bound the ORM's way. A prepared
    statement outlives a rolled-back transaction; a proxy that pools transactions rather
    than sessions does not keep it: set ``DATABASE_PREPARED_STATEMENTS=false`` there. The
    server re-plans one after a migration by itself, except that a statement whose result
    columns changed type is refused until its connection closes: restart the processes after
    such a migration, as a deployment does anyway.
    """
    db = cursor.db
    if db.vendor != "postgresql" or not getattr(settings, "L2C_PREPARED_STATEMENTS", True):
        cursor.execute(sql, params)
        return
    name, prepare, run = _prepared_form(sql)
    names = _prepared.get(db.connection)
    if names is None:
        names = _prepared[db.connection] = set()
    if name not in names:
        cursor.execute(prepare)
        names.add(name)
    cursor.execute(run, params)
