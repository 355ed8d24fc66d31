"""Reads of the catalogue and stock, for other apps and the API."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.core.cache import cache
from django.db.models import F

from inventory.models import Product, Reservation, Stock
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
