"""django-q2 entry points of the orders domain: one service call each."""

from __future__ import annotations

from orders.idempotency import idempotency_records_purge


def purge_idempotency_records() -> int:
    return idempotency_records_purge()
