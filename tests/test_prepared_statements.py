"""The hot paths' plain statements: prepared once per connection, run with EXECUTE."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from l2c import db

pytestmark = pytest.mark.django_db

# A literal percent sign and values of several types, as the hot paths send them.
SQL = "SELECT %s::integer + 1, %s::text || '%%', %s::timestamptz IS NULL"


@pytest.fixture
def wrapper(own_connection: Any) -> Any:
    """What this connection prepared is gone when it closes."""
    return own_connection


def _run(wrapper, sql: str = SQL, params: tuple[object, ...] = (41, "a'b", None)):
    with CaptureQueriesContext(wrapper) as seen, wrapper.cursor() as cursor:
        db.execute(cursor, sql, list(params))
        row = cursor.fetchone()
    return row, [query["sql"].split(" ", 1)[0] for query in seen.captured_queries]


def test_the_prepared_form_numbers_the_placeholders_and_keeps_literal_percents():
    name, prepare, run = db._prepared_form(SQL)

    assert prepare == (
        f"PREPARE {name} AS SELECT $1::integer + 1, $2::text || '%', $3::timestamptz IS NULL"
    )
    assert run == f"EXECUTE {name}(%s, %s, %s)"
    assert db.prepared_sql(name) == SQL  # what a log's EXECUTE stands for
    assert db._prepared_form("SELECT 1")[2] == f"EXECUTE {db._prepared_form('SELECT 1')[0]}"


def test_a_statement_is_prepared_once_per_connection_and_answers_as_the_plain_one(wrapper):
    if wrapper.vendor != "postgresql":
        pytest.skip("PostgreSQL only")

    first, sent_first = _run(wrapper)
    second, sent_second = _run(wrapper, params=(1, "", None))

    assert first == (42, "a'b%", True)
    assert second == (2, "%", True)
    assert sent_first == ["PREPARE", "EXECUTE"]
    assert sent_second == ["EXECUTE"]


def test_a_rolled_back_transaction_keeps_what_it_prepared(wrapper):
    if wrapper.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    with pytest.raises(ZeroDivisionError), transaction.atomic(using=wrapper.alias):
        assert _run(wrapper)[1] == ["PREPARE", "EXECUTE"]
        raise ZeroDivisionError

    row, sent = _run(wrapper)

    assert row == (42, "a'b%", True)
    assert sent == ["EXECUTE"]


def test_a_new_connection_prepares_again(wrapper):
    if wrapper.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    _run(wrapper)
    wrapper.close()

    row, sent = _run(wrapper)

    assert row == (42, "a'b%", True)
    assert sent == ["PREPARE", "EXECUTE"]


def test_switched_off_it_runs_the_plain_statement(wrapper, settings):
    if wrapper.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    settings.L2C_PREPARED_STATEMENTS = False

    row, sent = _run(wrapper)

    assert sent == ["SELECT"]
    assert row[0] == 42


def test_the_engine_runs_its_bookkeeping_prepared():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    from sagas.engine import saga_run, saga_start

    with CaptureQueriesContext(connection) as seen:
        instance = saga_start("test.five_steps", data={}, enqueue=False)
        saga_run(instance.pk)

    sent = [query["sql"] for query in seen.captured_queries]
    instance.refresh_from_db()
    assert instance.status == "COMPLETED"
    # The saga's start, its lease and each step's bookkeeping statement.
    assert sum(sql.startswith("EXECUTE l2c_") for sql in sent) >= 7
