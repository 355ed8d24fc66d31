"""Reads of the catalogue and stock, for other apps and the API."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.core.cache import cache
from django.db.models import F, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from inventory.models import Product, Reservation, ReservationLine, Restock, Stock
from inventory.services import PRODUCT_LIST_CACHE_KEY


@dataclass(frozen=True)
class ProductInfo:
    sku: str
    name: str
    price: Decimal
    available: int


def product_prices(*, skus: Iterable[str]) -> dict[str, ProductInfo]:
    """The active products among ``skus`` with their current price, keyed by sku."""
    rows = Product.objects.filter(sku__in=list(skus), active=True).values(
        "sku", "name", "price", "stock__on_hand", "stock__reserved"
    )
    return {
        row["sku"]: ProductInfo(
            sku=row["sku"],
            name=row["name"],
            price=row["price"],
            available=(row["stock__on_hand"] or 0) - (row["stock__reserved"] or 0),
        )
        for row in rows
    }


def product_list_available(*, cache_seconds: int = 30) -> list[dict[str, object]]:
    """Active products with available stock; cached and dropped whenever stock moves."""
    cached = cache.get(PRODUCT_LIST_CACHE_KEY)
    if cached is not None:
        return cached
    rows = list(
        Product.objects.filter(active=True)
        .annotate(available=F("stock__on_hand") - F("stock__reserved"))
        .order_by("sku")
        .values("sku", "name", "price", "available")
    )
    for row in rows:
        row["price"] = str(row["price"])
        row["available"] = row["available"] or 0
    cache.set(PRODUCT_LIST_CACHE_KEY, rows, cache_seconds)
    return rows


def stock_get(*, sku: str) -> Stock | None:
    return Stock.objects.select_related("product").filter(product__sku=sku).first()


def reservation_get(*, key: str) -> Reservation | None:
    return Reservation.objects.filter(key=key).first()


def stock_invariant_violations() -> list[str]:
    """Products whose stock the ledgers do not explain.

    For every product: on_hand = everything restocked - everything sold (confirmed
    reservations), and reserved = what RESERVED reservations hold; never negative.
    """

    def line_total(status: str) -> Subquery:
        return Subquery(
            ReservationLine.objects.filter(product=OuterRef("product"), reservation__status=status)
            .values("product")
            .annotate(total=Sum("quantity"))
            .values("total")
        )

    restocked = Subquery(
        Restock.objects.filter(product=OuterRef("product"))
        .values("product")
        .annotate(total=Sum("quantity"))
        .values("total")
    )
    rows = Stock.objects.annotate(
        restocked=Coalesce(restocked, Value(0)),
        sold=Coalesce(line_total(Reservation.Status.CONFIRMED), Value(0)),
        holding=Coalesce(line_total(Reservation.Status.RESERVED), Value(0)),
    ).filter(
        ~Q(on_hand=F("restocked") - F("sold"))
        | ~Q(reserved=F("holding"))
        | Q(reserved__gt=F("on_hand"))
    )
    return [
        f"{row.product.sku}: on_hand {row.on_hand} (ledger {row.restocked - row.sold}), "
        f"reserved {row.reserved} (ledger {row.holding})"
        for row in rows.select_related("product")
    ]
