"""The hot paths' plain statements (``l2c.db.execute``): values bound on the server, the
statement prepared once per connection, errors and captured queries as Django's."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext

from l2c import db

pytestmark = pytest.mark.django_db

# A literal percent sign and values of several types, as the hot paths send them.
SQL = "SELECT %s::integer + 1, %s::text || '%%', %s::timestamptz IS NULL"
PARAMS = (41, "a'b", None)


@pytest.fixture
def wrapper(own_connection: Any) -> Any:
    """What this connection prepared is gone when it closes."""
    if own_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    return own_connection


def _run(wrapper, sql: str = SQL, params: tuple[object, ...] = PARAMS) -> Any:
    with db.execute(sql, list(params), db=wrapper) as cursor:
        return cursor.fetchone()


def _prepared(wrapper) -> list[str]:
    """The statements the server holds prepared for this connection (its own view)."""
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        return [row[0] for row in cursor.fetchall()]


def _ours(wrapper) -> list[str]:
    return [sql for sql in _prepared(wrapper) if "|| '%'" in sql]


def test_a_statement_is_prepared_once_per_connection_and_answers_as_the_plain_one(wrapper):
    first = _run(wrapper)
    second = _run(wrapper, params=(1, "", None))

    assert first == (42, "a'b%", True)
    assert second == (2, "%", True)
    assert _ours(wrapper) == ["SELECT $1::integer + 1, $2::text || '%', $3::timestamptz IS NULL"]


def test_the_orm_statements_of_the_same_connection_stay_unprepared(wrapper):
    _run(wrapper)
    for _ in range(10):  # more than psycopg's own threshold for preparing a repeated query
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1 + %s", [1])

    assert [sql for sql in _prepared(wrapper) if "1 + " in sql] == []
    assert wrapper.connection.prepare_threshold is None


def test_a_new_connection_prepares_again(wrapper):
    _run(wrapper)
    wrapper.close()
    assert _ours(wrapper) == []  # a fresh session

    assert _run(wrapper) == (42, "a'b%", True)
    assert len(_ours(wrapper)) == 1


def test_a_rolled_back_transaction_leaves_the_statement_usable(wrapper):
    # psycopg forgets what it prepared at a rollback (and tells the server): it prepares again.
    wrapper.set_autocommit(False)
    try:
        _run(wrapper)
        wrapper.rollback()
        assert _run(wrapper) == (42, "a'b%", True)
        assert len(_ours(wrapper)) == 1
    finally:
        wrapper.rollback()
        wrapper.set_autocommit(True)


def test_switched_off_it_binds_on_the_server_without_preparing(wrapper, settings):
    settings.L2C_PREPARED_STATEMENTS = False

    assert _run(wrapper) == (42, "a'b%", True)
    assert _ours(wrapper) == []


def test_errors_are_djangos_and_a_broken_transaction_is_refused():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE prepared_once (id integer PRIMARY KEY)")
    insert = "INSERT INTO prepared_once (id) VALUES (%s)"
    db.execute(insert, [1]).close()

    with transaction.atomic():
        with pytest.raises(IntegrityError), transaction.atomic(savepoint=False):
            db.execute(insert, [1])
        with pytest.raises(TransactionManagementError):
            db.execute("SELECT 1", [])


def test_captured_queries_show_the_statement(wrapper):
    with CaptureQueriesContext(wrapper) as seen:
        _run(wrapper)

    assert [query["sql"] for query in seen.captured_queries][-1].startswith("SELECT 41::integer")


def test_the_engine_runs_its_bookkeeping_prepared():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    from sagas.engine import saga_run, saga_start

    instance = saga_start("test.five_steps", data={}, enqueue=False)
    saga_run(instance.pk)

    instance.refresh_from_db()
    assert instance.status == "COMPLETED"
    prepared = _prepared(connection)
    # The saga's start, its lease, and the step bookkeeping (one shape for steps 1-4, one
    # for the last step, which also finishes the saga).
    assert any("INSERT INTO sagas_sagainstance" in sql for sql in prepared)
    assert any(sql.startswith("UPDATE sagas_sagainstance SET lease_owner") for sql in prepared)
    assert sum("INSERT INTO sagas_sagastep" in sql for sql in prepared) >= 2
