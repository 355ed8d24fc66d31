"""The PostgreSQL backend's health check: ask the server only when the socket moved."""

from __future__ import annotations

import select
from typing import Any

import pytest
from django.db import connections

from tests.workers import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def victim(own_connection: Any) -> Any:
    """The connection the server ends or notifies."""
    return own_connection


def _run(sql: str, params: list[object] | None = None) -> None:
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute(sql, params or [])
    finally:
        other.close()


def test_a_quiet_connection_is_usable(victim):
    assert victim.is_usable()
    with victim.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_a_connection_the_server_ended_is_not_usable(victim):
    if victim.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    pid = victim.connection.info.backend_pid

    _run("SELECT pg_terminate_backend(%s)", [pid])

    wait_for(lambda: not victim.is_usable(), timeout=30, what="the ended connection noticed")
    victim.close()
    victim.ensure_connection()  # and a new one replaces it
    assert victim.is_usable() and victim.connection.info.backend_pid != pid


def test_an_unsolicited_message_gets_the_round_trip_and_the_connection_stays(victim):
    if victim.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    victim.connection.autocommit = True
    victim.connection.execute("LISTEN l2c_health")

    _run("NOTIFY l2c_health")
    fd = victim.connection.fileno()
    wait_for(lambda: select.select([fd], [], [], 0)[0], timeout=30, what="the notification")

    # The socket is readable, so the SELECT 1 decides: still usable.
    assert victim.is_usable()
