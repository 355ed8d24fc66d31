"""Errors of the payment steps.

Two families, because the saga engine treats them differently. ``CardDeclined`` and
``PaymentRejected`` are ``DomainError``s: the gateway gave a final answer, retrying gives the
same one, so the saga compensates. The ``GatewayError``s are transient: the gateway could not
answer, so the step is retried with the same idempotency key (the gateway dedupes).
"""

from __future__ import annotations

from l2c.errors import DomainError


class CardDeclined(DomainError):
    code = "card_declined"
    default_message = "The card was declined."


class PaymentRejected(DomainError):
    """The gateway refused the request as invalid (a 4xx other than a decline): permanent."""

    code = "payment_rejected"
    default_message = "The payment gateway rejected the request."


class GatewayError(Exception):
    """The gateway gave no final answer. Transient: retry with the same idempotency key."""


class GatewayUnavailable(GatewayError):
    """A 5xx, or the connection was refused or reset."""


class GatewayTimeout(GatewayError):
    """No answer within the timeout: the outcome is unknown.

    The request may have been carried out. Resolve it with the gateway's status query
    (``payment_resolve``) rather than assuming either way.
    """
