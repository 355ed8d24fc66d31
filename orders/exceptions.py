from __future__ import annotations

from l2c.errors import DomainError


class CustomerNotFound(DomainError):
    code = "customer_not_found"
    default_message = "The customer does not exist."


class CustomerInactive(DomainError):
    code = "customer_inactive"
    default_message = "The customer's account is not active."


class CreditLimitExceeded(DomainError):
    code = "over_credit_limit"
    default_message = "The order total is over the customer's credit limit."


class PointsExceedOrderValue(DomainError):
    code = "points_exceed_order_value"
    default_message = "The points to use are worth more than the order."


class OrderStateError(DomainError):
    code = "order_state"
    default_message = "The order is not in a state that allows this."
