"""Transactions for domain services: a savepoint only where somebody can use it.

A service nested in its caller's transaction normally gets a savepoint, so that a caller who
catches its error can go on. A saga step's transaction is different: whatever fails inside
it fails the whole step, which rolls back, and the engine never goes on in it. There a
savepoint is two round trips (SAVEPOINT, RELEASE) that buy nothing, and a step calls several
services; ``step_transaction`` marks the connection and ``savepoint``/``atomic`` skip them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.db import transaction

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "l2c_in_step_transaction"


@contextlib.contextmanager
def step_transaction() -> Iterator[None]:
    """``transaction.atomic()`` for a saga step's action and its bookkeeping."""
    with transaction.atomic():
        connection = transaction.get_connection()
        setattr(connection, _MARK, True)
        try:
            yield
        finally:
            setattr(connection, _MARK, False)


def in_step_transaction() -> bool:
    return getattr(transaction.get_connection(), _MARK, False)


def savepoint() -> transaction.Atomic:
    """``transaction.atomic()``, without the savepoint inside a saga step's transaction."""
    return transaction.atomic(savepoint=not in_step_transaction())


def atomic(func: F) -> F:
    """``@transaction.atomic`` for a domain service, without the savepoint inside a saga
    step's transaction."""

    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        with savepoint():
            return func(*args, **kwargs)

    return inner  # type: ignore[return-value]
