"""PostgreSQL with django-prometheus's database metrics, at a lower cost per statement, and
a health check that asks the server only when the socket says something happened.

django-prometheus's cursor looks up its labelled metrics and builds two context managers on
every statement; a saga step runs several statements, so that is part of every step's cost.
This cursor updates the same metrics (``django_db_execute_total``,
``django_db_execute_many_total``, ``django_db_query_duration_seconds``,
``django_db_errors_total``, and the connection counters of the inherited wrapper), with the
labelled children looked up once per connection.
"""

from __future__ import annotations

import select
from time import perf_counter
from typing import Any

from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
from django_prometheus.db import (
    errors_total,
    execute_many_total,
    execute_total,
    query_duration_seconds,
)
from django_prometheus.db.backends.postgresql import base


def counting_cursor(cursor_class: type, alias: str, vendor: str) -> type:
    executed = execute_total.labels(alias, vendor)
    executed_many = execute_many_total.labels(alias, vendor)
    duration = query_duration_seconds.labels(alias, vendor)

    def timed(method: Any, *args: Any, **kwargs: Any) -> Any:
        start = perf_counter()
        try:
            return method(*args, **kwargs)
        except BaseException as error:
            errors_total.labels(alias, vendor, type(error).__name__).inc()
            raise
        finally:
            duration.observe(perf_counter() - start)

    class CountingCursor(cursor_class):  # type: ignore[misc, valid-type]
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            executed.inc()
            return timed(super().execute, *args, **kwargs)

        def executemany(self, query: Any, params_seq: Any, *args: Any, **kwargs: Any) -> Any:
            params_seq = list(params_seq)
            executed.inc(len(params_seq))
            executed_many.inc(len(params_seq))
            return timed(super().executemany, query, params_seq, *args, **kwargs)

    return CountingCursor


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        """Django asks this before each request and each worker task (CONN_HEALTH_CHECKS),
        and its answer is a ``SELECT 1`` round trip every time.

        A server that ends a connection (a restart, an administrator, an idle timeout) sends
        its reason and closes the socket, which leaves the socket readable while no query is
        running. So: a closed or broken connection is not usable; a quiet socket is; only a
        readable one (an end, or an unsolicited notice) gets Django's ``SELECT 1`` to decide.
        """
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            return False
        try:
            # poll(), not select(): no limit on the descriptor's number.
            poller = select.poll()
            poller.register(connection.fileno(), select.POLLIN)
            readable = poller.poll(0)
        except (AttributeError, OSError, ValueError):
            readable = True  # cannot tell without asking: ask
        return not readable or super().is_usable()

    def get_connection_params(self) -> dict[str, Any]:
        # Django's parameters, not django-prometheus's: its cursor would count twice.
        params = PostgresWrapper.get_connection_params(self)
        params["cursor_factory"] = counting_cursor(
            params["cursor_factory"], self.alias, self.vendor
        )
        return params
