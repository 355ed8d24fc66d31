from __future__ import annotations

from l2c.errors import DomainError


class NotEnoughPoints(DomainError):
    code = "not_enough_points"
    default_message = "The customer does not have enough points."


class PointsAccountMissing(DomainError):
    code = "points_account_missing"
    default_message = "The customer has no points account."
