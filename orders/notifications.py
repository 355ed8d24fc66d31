"""E-mails to customers, sent by outbox consumers after the change they report committed.

Importing this module registers the consumers, so every process that relays the outbox must
import it (``OrdersConfig.ready`` does).
"""

from __future__ import annotations

from django.core.mail import send_mail

from sagas.models import OutboxMessage
from sagas.outbox import consumer

ORDER_PAID = "order.paid"


@consumer(ORDER_PAID, "email:order.paid")
def order_paid_email_send(message: OutboxMessage) -> None:
    """Tell the customer that their order is paid: one e-mail per ``order.paid`` message.

    Payload: ``order_id``, ``customer_email``, ``total`` (a decimal string) and
    ``currency``. The relay runs this through ``consume_once``, so a message published
    twice sends one e-mail. A missing field or a mail server error raises, and the relay
    retries the message.
    """
    payload = message.payload
    order_id = payload["order_id"]
    total = f"{payload['total']} {payload['currency']}"
    send_mail(
        subject=f"Your order {order_id} is paid",
        message=(
            f"Thank you for your order {order_id}.\n\nWe have received your payment of {total}.\n"
        ),
        # None: DEFAULT_FROM_EMAIL from the settings.
        from_email=None,
        recipient_list=[payload["customer_email"]],
        fail_silently=False,
    )
