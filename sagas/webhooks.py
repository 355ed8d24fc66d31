"""Outbox messages delivered to webhook subscriptions as signed HTTP POSTs.

Each active ``WebhookSubscription`` whose topics match a message is one more consumer of it,
named ``webhook:<subscription id>``. The body is JSON::

    {"id": "<message id>", "topic": "...", "key": "...", "payload": {...}, "created_at": "..."}

with the headers ``X-L2C-Message-Id``, ``X-L2C-Topic`` and ``X-L2C-Signature: sha256=<hex>``,
the HMAC-SHA256 of the exact body bytes under the subscription's secret. A 2xx answer means
delivered; any other answer or a network error is a failure that the outbox relay retries.

Delivery is at least once: the POST leaves our database, so a crash between a 2xx answer and
recording it sends the message again. Receivers dedupe on ``X-L2C-Message-Id``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder

from sagas.models import OutboxMessage, ProcessedMessage, WebhookSubscription

logger = logging.getLogger("sagas.webhooks")

SIGNATURE_PREFIX = "sha256="
USER_AGENT = "L2C-Webhooks/1.0"
# Only the start of an answer is read: the status decides, the body is for humans.
_MAX_ANSWER_BYTES = 64 * 1024

_DEFAULTS: dict[str, Any] = {
    # Seconds to wait for a receiver to connect and answer before the attempt fails.
    "WEBHOOK_TIMEOUT": 5.0,
}


class WebhookDeliveryError(Exception):
    """A receiver did not take a message: a non-2xx answer, a timeout or a network error."""


def _setting(name: str) -> Any:
    # Read on every call, never at import time, so tests and deploys can change it.
    return getattr(settings, "SAGAS", {}).get(name, _DEFAULTS[name])


def webhook_consumer_name(subscription_id: int) -> str:
    """The stable consumer name of a subscription in the ProcessedMessage table."""
    return f"webhook:{subscription_id}"


def webhook_subscriptions_for(topic: str) -> list[WebhookSubscription]:
    """The active subscriptions that want ``topic`` (an empty topic list means every topic)."""
    # Filtered in Python: the table is small, and JSON containment differs per database.
    return [
        subscription
        for subscription in WebhookSubscription.objects.filter(active=True).order_by("pk")
        if not subscription.topics or topic in subscription.topics
    ]


def webhook_body(*, message: OutboxMessage) -> bytes:
    """The exact bytes POSTed for ``message``; the signature covers these bytes."""
    document = {
        "id": str(message.pk),
        "topic": message.topic,
        "key": message.key,
        "payload": message.payload,
        "created_at": message.created_at,
    }
    return json.dumps(document, cls=DjangoJSONEncoder, separators=(",", ":")).encode()


def webhook_signature(secret: str, body: bytes) -> str:
    """The ``X-L2C-Signature`` value for ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def webhook_verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (for receivers).

    The comparison takes the same time wherever the first difference is, so an attacker
    cannot find a valid signature byte by byte.
    """
    if not header:
        return False
    expected = webhook_signature(secret, body).encode()
    return hmac.compare_digest(expected, header.encode("utf-8", "replace"))


def webhook_post(*, subscription: WebhookSubscription, message: OutboxMessage) -> int:
    """POST ``message`` to the subscription's URL and return the 2xx status.

    Raises WebhookDeliveryError on any other status, a timeout or a network error. Must not
    run inside a transaction that holds row locks: it waits on a remote server.
    """
    body = webhook_body(message=message)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-L2C-Message-Id": str(message.pk),
        "X-L2C-Topic": message.topic,
        "X-L2C-Signature": webhook_signature(subscription.secret, body),
    }
    url = urlsplit(subscription.url)
    try:
        port = url.port
    except ValueError:  # a port out of range or not a number
        port = -1
    if url.scheme not in ("http", "https") or not url.hostname or port == -1:
        raise WebhookDeliveryError(f"unsupported webhook URL {subscription.url!r}")
    connection_class = (
        http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    )
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    # http.client rather than urllib: urllib follows redirects, and a redirected POST would
    # reach a URL nobody subscribed (or arrive as a GET). A 3xx is a failure here.
    # The timeout bounds the connect and each read, so a receiver cannot hold a relay for
    # long by answering slowly (a receiver that trickles bytes can; that is accepted).
    connection = connection_class(url.hostname, port, timeout=float(_setting("WEBHOOK_TIMEOUT")))
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(_MAX_ANSWER_BYTES)
        status = response.status
    except (OSError, http.client.HTTPException) as error:
        raise WebhookDeliveryError(f"{type(error).__name__}: {error}") from error
    finally:
        connection.close()
    if not 200 <= status < 300:
        raise WebhookDeliveryError(f"HTTP {status} from {url.hostname}")
    return status


def webhook_deliver_once(*, subscription: WebhookSubscription, message: OutboxMessage) -> bool:
    """Deliver ``message`` to a subscription unless it already took it.

    Returns True when it was POSTed now, False when ProcessedMessage shows an earlier
    delivery; raises WebhookDeliveryError when the receiver did not take it. Call outside
    any transaction: the POST is slow and cannot be rolled back anyway.
    """
    name = webhook_consumer_name(subscription.pk)
    processed = ProcessedMessage.objects.filter(consumer=name, message_id=message.pk)
    if processed.exists():
        return False
    webhook_post(subscription=subscription, message=message)
    # Recorded only after the 2xx: the effect is on the receiver's side, so recording first
    # would lose the message if the POST then failed. A concurrent delivery that also got a
    # 2xx finds the row already there, which is fine.
    ProcessedMessage.objects.bulk_create(
        [ProcessedMessage(consumer=name, message_id=message.pk)], ignore_conflicts=True
    )
    return True
