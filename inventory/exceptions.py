from __future__ import annotations

from l2c.errors import DomainError


class InsufficientStock(DomainError):
    code = "insufficient_stock"
    default_message = "Not enough stock for the requested quantity."


class UnknownProduct(DomainError):
    code = "unknown_product"
    default_message = "The product does not exist or is not for sale."


class ReservationNotActive(DomainError):
    code = "reservation_not_active"
    default_message = "The reservation was released and can no longer be confirmed."
