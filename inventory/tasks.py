"""django-q2 entry points of the inventory: one service call each."""

from __future__ import annotations

from inventory.services import reservation_expire_due


def expire_reservations() -> int:
    return reservation_expire_due()
