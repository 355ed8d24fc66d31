"""Writes to stock. Every change is a conditional UPDATE with ``F()``, never read-modify-write.

Lock order: every service that touches several stock rows updates them in product-id order,
so two concurrent reservations cannot deadlock on each other's rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from inventory.exceptions import InsufficientStock, ReservationNotActive, UnknownProduct
from inventory.models import Product, Reservation, ReservationLine, Restock, Stock
from l2c.db import atomic, db_value, fetch_instances, returning, savepoint

PRODUCT_LIST_CACHE_KEY = "inventory:product-list:v1"


@dataclass(frozen=True)
class ItemIn:
    sku: str
    quantity: int


def _invalidate_product_cache() -> None:
    # After commit: a reader must never cache a value from a transaction that rolls back.
    transaction.on_commit(lambda: cache.delete(PRODUCT_LIST_CACHE_KEY))


def _merge_items(items: Iterable[ItemIn]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for item in items:
        if item.quantity <= 0:
            raise ValueError(f"quantity for {item.sku!r} must be positive, got {item.quantity}")
        merged[item.sku] = merged.get(item.sku, 0) + item.quantity
    if not merged:
        raise ValueError("a reservation needs at least one item")
    return merged


@atomic
def stock_reserve(
    *, key: str, items: Iterable[ItemIn], ttl_seconds: int | None = None
) -> Reservation:
    """Hold stock for every item, all or nothing. Idempotent on ``key``.

    A second call with the same key returns the first reservation (whatever its status now)
    and changes nothing. Raises ``UnknownProduct`` or ``InsufficientStock``, leaving no row.
    """
    wanted = _merge_items(items)
    ttl = settings.RESERVATION_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    try:
        with savepoint():
            reservation = Reservation.objects.create(
                key=key, expires_at=timezone.now() + timedelta(seconds=ttl)
            )
    except IntegrityError:
        return Reservation.objects.get(key=key)

    products = {p.sku: p for p in Product.objects.filter(sku__in=wanted, active=True)}
    missing = sorted(set(wanted) - set(products))
    if missing:
        raise UnknownProduct(skus=missing)

    lines = []
    for product in sorted(products.values(), key=lambda p: p.pk):
        quantity = wanted[product.sku]
        taken = Stock.objects.filter(
            product=product, on_hand__gte=F("reserved") + quantity
        ).update(reserved=F("reserved") + quantity, updated_at=timezone.now())
        if not taken:
            stock = Stock.objects.filter(product=product).first()
            raise InsufficientStock(
                sku=product.sku,
                requested=quantity,
                available=stock.available if stock else 0,
            )
        lines.append(ReservationLine(reservation=reservation, product=product, quantity=quantity))
    ReservationLine.objects.bulk_create(lines)
    _invalidate_product_cache()
    return reservation


def _reservation_lines(reservation_id: int) -> list[ReservationLine]:
    return list(
        ReservationLine.objects.filter(reservation_id=reservation_id).order_by("product_id")
    )


@atomic
def stock_release(*, key: str, reason: str = "") -> Reservation | None:
    """Give reserved units back. Idempotent: only a RESERVED reservation is released.

    Releasing a key that holds nothing (never reserved, already released or confirmed) is a
    no-op that returns what is there, or None.
    """
    released = Reservation.objects.filter(key=key, status=Reservation.Status.RESERVED).update(
        status=Reservation.Status.RELEASED, release_reason=reason[:200], updated_at=timezone.now()
    )
    reservation = Reservation.objects.filter(key=key).first()
    if released and reservation is not None:
        for line in _reservation_lines(reservation.pk):
            Stock.objects.filter(product_id=line.product_id).update(
                reserved=F("reserved") - line.quantity, updated_at=timezone.now()
            )
        _invalidate_product_cache()
    return reservation


@atomic
def stock_confirm(*, key: str) -> Reservation:
    """Turn reserved units into sold ones (they leave on_hand). Idempotent on ``key``.

    A reservation released by the expiry sweep is honoured when the units are still
    available; otherwise ``InsufficientStock`` is raised and nothing changes.
    """
    Status = Reservation.Status
    # The usual case, a held reservation, moves and comes back in one statement. Its row
    # lock orders it with a concurrent release of the same key, as SELECT FOR UPDATE does
    # for the other cases below; a failed line rolls the status back with everything else.
    held = fetch_instances(
        Reservation,
        f"UPDATE {Reservation._meta.db_table} SET status = %s, updated_at = %s"
        f" WHERE key = %s AND status = %s {returning(Reservation)}",
        [
            Status.CONFIRMED,
            db_value(Reservation, "updated_at", timezone.now()),
            key,
            Status.RESERVED,
        ],
    )
    if held:
        reservation, was_reserved = held[0], True
    else:
        reservation = Reservation.objects.select_for_update().filter(key=key).first()
        if reservation is None:
            raise ReservationNotActive(key=key)
        if reservation.status == Status.CONFIRMED:
            return reservation
        was_reserved = reservation.status == Status.RESERVED
    for line in _reservation_lines(reservation.pk):
        if was_reserved:
            moved = Stock.objects.filter(
                product_id=line.product_id, reserved__gte=line.quantity
            ).update(
                on_hand=F("on_hand") - line.quantity,
                reserved=F("reserved") - line.quantity,
                updated_at=timezone.now(),
            )
        else:
            moved = Stock.objects.filter(
                product_id=line.product_id, on_hand__gte=F("reserved") + line.quantity
            ).update(on_hand=F("on_hand") - line.quantity, updated_at=timezone.now())
        if not moved:
            raise InsufficientStock(sku=str(line.product_id), requested=line.quantity)
    if not held:
        reservation.status = Status.CONFIRMED
        reservation.save(update_fields=["status", "updated_at"])
    _invalidate_product_cache()
    return reservation


@atomic
def stock_restock(*, key: str, sku: str, quantity: int, reason: str = "") -> Restock:
    """Add units to on_hand. Idempotent on ``key`` through Restock's unique key."""
    if quantity <= 0:
        raise ValueError(f"quantity must be positive, got {quantity}")
    product = Product.objects.filter(sku=sku).first()
    if product is None:
        raise UnknownProduct(skus=[sku])
    try:
        with savepoint():
            restock = Restock.objects.create(
                key=key, product=product, quantity=quantity, reason=reason[:200]
            )
    except IntegrityError:
        return Restock.objects.get(key=key)
    Stock.objects.get_or_create(product=product)
    Stock.objects.filter(product=product).update(
        on_hand=F("on_hand") + quantity, updated_at=timezone.now()
    )
    _invalidate_product_cache()
    return restock


def reservation_expire_due(*, now: datetime | None = None, limit: int = 100) -> int:
    """Release reservations whose hold has expired; returns how many were released."""
    moment = now or timezone.now()
    keys = list(
        Reservation.objects.filter(status=Reservation.Status.RESERVED, expires_at__lte=moment)
        .order_by("expires_at")
        .values_list("key", flat=True)[:limit]
    )
    released = 0
    for key in keys:
        reservation = stock_release(key=key, reason="expired")
        if reservation is not None and reservation.release_reason == "expired":
            released += 1
    return released


@transaction.atomic
def product_create(
    *, sku: str, name: str, price: object, on_hand: int = 0, active: bool = True
) -> Product:
    """Create a product with its stock row. Idempotent on ``sku``: an existing one is kept."""
    product, created = Product.objects.get_or_create(
        sku=sku, defaults={"name": name, "price": price, "active": active}
    )
    Stock.objects.get_or_create(product=product)
    if created and on_hand:
        # Opening stock is a restock like any other, so the restock ledger explains every
        # unit that was ever on hand (the stock invariant relies on it).
        stock_restock(key=f"opening:{sku}", sku=sku, quantity=on_hand, reason="opening stock")
    _invalidate_product_cache()
    return product
