"""The hot paths' plain statements (``l2c.db.execute``): prepared once per connection with
``PREPARE`` and run as ``EXECUTE`` with the values bound on the client, errors and captured
queries as Django's; and a transaction's last statement sent with its COMMIT."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
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
    """The statements the server holds prepared for this connection (its own view), as
    they were given to PREPARE."""
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0].split(" AS ", 1)[1] for row in cursor.fetchall()]


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


def test_a_rolled_back_transaction_leaves_the_statement_prepared(wrapper):
    # PREPARE is session state: a rollback keeps it, and the driver (which prepares nothing
    # itself) sends no DEALLOCATE ALL after it.
    wrapper.set_autocommit(False)
    try:
        _run(wrapper)
        wrapper.rollback()
        assert _run(wrapper) == (42, "a'b%", True)
        assert len(_ours(wrapper)) == 1
    finally:
        wrapper.rollback()
        wrapper.set_autocommit(True)


def test_switched_off_it_runs_the_statement_without_preparing(wrapper, settings):
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


# --- A transaction's last statement and its COMMIT in one round trip ------------------------

COMMITTED = "CREATE TABLE IF NOT EXISTS committed_once (id integer PRIMARY KEY)"


@pytest.fixture
def table(transactional_db, own_connection):
    """A table, and another connection to see what is committed."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute(COMMITTED)
    yield own_connection
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE committed_once")


def _seen(other) -> list[int]:
    with other.cursor() as cursor:
        cursor.execute("SELECT id FROM committed_once ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


def test_the_last_statement_commits_the_outermost_block_with_it(table):
    callbacks = []
    with transaction.atomic():
        transaction.on_commit(lambda: callbacks.append("after commit"))
        db.execute("INSERT INTO committed_once (id) VALUES (%s)", [1]).close()
        cursor = db.execute_and_commit(
            "INSERT INTO committed_once (id) VALUES (%s) RETURNING id", [2]
        )
        assert cursor.fetchone() == (2,)
        assert _seen(table) == [1, 2]  # committed before the block ends
        assert callbacks == []  # the block's callbacks still wait for its end

    assert callbacks == ["after commit"]
    assert connection.get_autocommit()


def test_a_failing_last_statement_commits_nothing(table):
    db.execute("INSERT INTO committed_once (id) VALUES (%s)", [1]).close()

    with pytest.raises(IntegrityError), transaction.atomic():
        db.execute("INSERT INTO committed_once (id) VALUES (%s)", [2]).close()
        db.execute_and_commit("INSERT INTO committed_once (id) VALUES (%s)", [1])

    assert _seen(table) == [1]
    assert db.execute("SELECT 1", []).fetchone() == (1,)  # the connection is usable


@pytest.mark.parametrize("where", ["savepoint", "nested block", "no block"])
def test_inside_a_callers_transaction_it_declines(table, where):
    if where == "no block":
        assert db.execute_and_commit("SELECT 1", []) is None
        return
    with transaction.atomic():
        with transaction.atomic(savepoint=where == "savepoint"):
            assert db.execute_and_commit("SELECT 1", []) is None
        db.execute("INSERT INTO committed_once (id) VALUES (%s)", [1]).close()
        assert _seen(table) == []


def test_a_saga_commits_each_local_step_with_its_bookkeeping(table, folded_commits):
    from sagas.engine import saga_run, saga_start
    from sagas.models import SagaStep

    instance = saga_start("test.five_steps", data={}, enqueue=False)
    saga_run(instance.pk)

    instance.refresh_from_db()
    assert instance.status == "COMPLETED"
    assert SagaStep.objects.filter(saga=instance, status="COMPLETED").count() == 5
    assert folded_commits == [True] * 5


FOLDED = (
    "INSERT INTO committed_once (id) VALUES (%s) RETURNING id, %s::text, %s::jsonb ->> 'a',"
    " %s::timestamptz, %s::uuid, %s::integer IS NULL"
)


def test_the_folded_statement_is_prepared_once_and_binds_values_as_the_orm_does(table):
    text = "it's a \\ back'slash, ünïcode and a %s"
    stamp = datetime(2026, 12, 4, 3, 5, 7, 123456, tzinfo=UTC)
    key = uuid.uuid4()
    values = [text, '{"a": "b\'c"}', stamp, key, None]

    # The first block prepares the statement and fails: what it prepared outlives it.
    with pytest.raises(IntegrityError), transaction.atomic():
        db.execute("INSERT INTO committed_once (id) VALUES (%s)", [1]).close()
        db.execute_and_commit(FOLDED, [1, *values])
    rows = []
    for pk in (2, 3):
        with transaction.atomic():
            rows.append(db.execute_and_commit(FOLDED, [pk, *values]).fetchone())

    assert rows == [(pk, text, "b'c", stamp, key, True) for pk in (2, 3)]
    assert _seen(table) == [2, 3]
    assert [sql for sql in _prepared(connection) if "RETURNING id, $2::text" in sql] == [
        "INSERT INTO committed_once (id) VALUES ($1) RETURNING id, $2::text, $3::jsonb ->> 'a',"
        " $4::timestamptz, $5::uuid, $6::integer IS NULL"
    ]


def test_with_prepared_statements_off_it_declines(table, settings):
    settings.L2C_PREPARED_STATEMENTS = False

    with transaction.atomic():
        assert db.execute_and_commit("SELECT 1", []) is None
