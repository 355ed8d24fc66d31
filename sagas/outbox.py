"""The transactional outbox: messages that commit with the business change that caused them.

- ``outbox_put`` inserts a message in the caller's transaction: it exists if and only if the
  business change committed. After the commit it asks for a prompt relay: from a worker's
  saga task, that worker relays when its task ends (``relay_when_done``); from anywhere else
  (a web request), a relay task is enqueued.
- ``outbox_relay`` publishes due messages to every consumer of their topic, at least once.
  It runs from those prompt relays and from the periodic schedule, which is the backstop when
  the broker lost the prompt task or a relay died half-way.
- Consumers make at-least-once publishing effectively once: ``consume_once`` records
  ``ProcessedMessage(consumer, message id)`` in the transaction of the consumer's effect, and
  the unique constraint on that pair refuses a second run. Webhook subscriptions are
  consumers too (``sagas.webhooks``), deduped on the same table.

Consumers register with the ``consumer`` decorator under a stable name: the name is stored
with every processed message, so renaming a consumer makes it take old messages again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Min
from django.utils import timezone

from l2c.db import db_value, execute, fetch_instances, returning, savepoint
from sagas.models import OutboxMessage, ProcessedMessage, WebhookSubscription
from sagas.testing import fault_point
from sagas.webhooks import webhook_consumer_name, webhook_deliver_once, webhook_subscriptions_for

logger = logging.getLogger("sagas.outbox")

Status = OutboxMessage.Status
Handler = Callable[[OutboxMessage], None]

# The django-q2 task the prompt relay enqueues.
RELAY_TASK = "sagas.tasks.relay_outbox"

_DEFAULTS: dict[str, Any] = {
    # Failed publish attempts after which a message is FAILED and waits for an operator.
    "OUTBOX_MAX_ATTEMPTS": 3,
    # Backoff after the first failed attempt, doubled after each further one up to the cap.
    "OUTBOX_RETRY_DELAY": 1.0,
    "OUTBOX_MAX_RETRY_DELAY": 60.0,
    # How long a relay owns a message it claimed. Must exceed the slowest publish of one
    # message (WEBHOOK_TIMEOUT times the number of subscriptions, plus the local consumers);
    # past it another relay may publish the message again, which consumers dedupe.
    "OUTBOX_CLAIM_SECONDS": 120.0,
    # Batches one relay task works through before it leaves the rest to the next task.
    "OUTBOX_RELAY_ROUNDS": 10,
}
_LAST_ERROR_CHARS = 4000
_json = DjangoJSONEncoder()


def _setting(name: str) -> Any:
    # Read on every call, never at import time, so tests and deploys can change it.
    return getattr(settings, "SAGAS", {}).get(name, _DEFAULTS[name])


# --- Writing ------------------------------------------------------------------------------


def outbox_put(
    *, topic: str, payload: Mapping[str, Any], key: str = "", dedup_key: str | None = None
) -> OutboxMessage:
    """Write a message in the caller's transaction; it is relayed after the commit.

    Precondition: call inside the ``transaction.atomic()`` that makes the business change,
    so that both commit or neither does. Outside a transaction the row commits at once.
    ``payload`` must be JSON-serialisable (Decimals and dates are stored as text). With
    ``dedup_key``, a second put under the same key returns the first message unchanged.
    """
    fields = {
        "topic": topic,
        "key": key,
        "dedup_key": dedup_key,
        # Stored as consumers will read it back: Decimal("9.90") becomes "9.90" right away.
        "payload": json.loads(_json.encode(dict(payload))),
    }
    if dedup_key is None:
        message = OutboxMessage.objects.create(**fields)
    else:
        try:
            # The savepoint keeps the caller's transaction usable after a duplicate key.
            with savepoint():
                message = OutboxMessage.objects.create(**fields)
        except IntegrityError:
            return OutboxMessage.objects.get(dedup_key=dedup_key)
    _relay_after_commit()
    return message


def _relay_after_commit() -> None:
    """Ask for one prompt relay when the current transaction commits.

    Many puts in one transaction need one relay: a relay publishes every due message. The
    check looks at the callbacks Django holds for this transaction rather than at a separate
    flag, because Django drops them on rollback (also of a savepoint), while a flag would
    outlive a rolled-back transaction and suppress the next one's relay.
    """
    connection = transaction.get_connection()
    if connection.in_atomic_block and any(
        entry[1] is _relay_soon for entry in connection.run_on_commit
    ):
        return
    transaction.on_commit(_relay_soon)


# Set while a worker runs a saga task (``relay_when_done``): the messages its steps put are
# relayed by that worker when the task ends, instead of by a relay task of their own.
_task = threading.local()
# Messages a task relays itself before it leaves the rest to a prompt relay task: enough for
# the few messages of one saga, little enough not to hold the worker on a backlog.
_IN_TASK_BATCH = 10


def _relay_soon() -> None:
    if getattr(_task, "active", False):
        _task.wanted = True
        return
    _enqueue_relay()


@contextlib.contextmanager
def relay_when_done() -> Iterator[None]:
    """Around a worker task: relay what the task's commits put in the outbox when it ends.

    The worker is about to be free anyway, and a message put by the last step of a saga
    goes out as soon as the saga is done, without the broker round trip, the pickling and
    the connection check of a separate task. Only a backlog bigger than one small batch,
    or a relay that failed, is left to a prompt relay task (and the periodic one).
    """
    _task.active, _task.wanted = True, False
    try:
        yield
    finally:
        wanted = _task.wanted
        _task.active = _task.wanted = False
        if wanted:
            try:
                if outbox_relay(batch=_IN_TASK_BATCH) >= _IN_TASK_BATCH:
                    _enqueue_relay()
            except Exception:
                logger.warning("in-task outbox relay failed; handing it over", exc_info=True)
                _enqueue_relay()


def _enqueue_relay() -> None:
    # Runs after the commit: a failure here must not reach the caller, whose change is
    # already committed. The periodic relay publishes the message anyway, just later.
    try:
        from django_q.tasks import async_task

        from sagas.engine import _broker  # one broker per process, shared with the engine

        async_task(RELAY_TASK, q_options={"task_name": "outbox relay", "broker": _broker(None)})
    except Exception:
        logger.warning("could not enqueue a prompt outbox relay", exc_info=True)


# --- Consumers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Consumer:
    """One receiver of a topic. ``deliver`` returns False when it had the message already."""

    name: str
    deliver: Callable[[OutboxMessage], bool]


_handlers: dict[str, dict[str, Handler]] = {}


def consumer(topic: str, name: str) -> Callable[[Handler], Handler]:
    """Register ``fn(message) -> None`` as the consumer ``name`` of ``topic``.

    The relay runs it through ``consume_once``: the handler's database writes commit with
    the record that it ran, so it takes effect once per message. Raising makes the relay
    retry the message later. Register at import time of a module every process imports.
    """

    def register(fn: Handler) -> Handler:
        handlers = _handlers.setdefault(topic, {})
        existing = handlers.get(name)
        if existing is not None and _qualified(existing) != _qualified(fn):
            raise ValueError(f"outbox consumer {name!r} of {topic!r} is already registered")
        handlers[name] = fn
        return fn

    return register


def _qualified(fn: Handler) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def consumer_remove(*, topic: str, name: str) -> None:
    """Forget a registered consumer (tests and plug-ins that unload)."""
    _handlers.get(topic, {}).pop(name, None)


def consumers_for(topic: str) -> list[Consumer]:
    """Every consumer of ``topic`` now: the registered handlers, then the active webhook
    subscriptions (read from the database on each call)."""
    consumers = [
        Consumer(name=name, deliver=partial(_consume_registered, name, fn))
        for name, fn in sorted(_handlers.get(topic, {}).items())
    ]
    consumers += [
        Consumer(
            name=webhook_consumer_name(subscription.pk),
            deliver=partial(_deliver_webhook, subscription),
        )
        for subscription in webhook_subscriptions_for(topic)
    ]
    return consumers


def _consume_registered(name: str, fn: Handler, message: OutboxMessage) -> bool:
    return consume_once(name, message, fn)


def _deliver_webhook(subscription: WebhookSubscription, message: OutboxMessage) -> bool:
    return webhook_deliver_once(subscription=subscription, message=message)


def consume_once(consumer_name: str, message: OutboxMessage, fn: Handler) -> bool:
    """Run ``fn(message)`` unless ``consumer_name`` already processed the message.

    Returns True when ``fn`` ran now, False for a duplicate delivery. The ProcessedMessage
    row and ``fn``'s database writes commit together; if ``fn`` raises, both roll back and
    the next delivery runs it again.

    The row is inserted before ``fn`` runs, not after: a concurrent delivery of the same
    message then blocks on the uncommitted unique key and is refused once this one commits,
    so even an effect outside the database (an e-mail) happens once. It can still repeat
    when the process dies after that effect and before the commit (at least once).
    """
    with transaction.atomic():
        if not _processed_insert(consumer_name, message.pk):
            return False
        fn(message)
    return True


def _processed_insert(consumer_name: str, message_id: Any) -> bool:
    """Record that ``consumer_name`` handled the message; False when it was there already.

    ``ON CONFLICT DO NOTHING`` on the unique pair: a duplicate costs neither a failed insert
    (with its savepoint and log line) nor a read before the insert."""
    params = [
        consumer_name,
        db_value(ProcessedMessage, "message_id", message_id),
        db_value(ProcessedMessage, "processed_at", timezone.now()),
    ]
    with execute(
        f"INSERT INTO {ProcessedMessage._meta.db_table} (consumer, message_id, processed_at)"
        " VALUES (%s, %s, %s) ON CONFLICT (consumer, message_id) DO NOTHING",
        params,
    ) as cursor:
        return cursor.rowcount == 1


def outbox_publish(
    *, message: OutboxMessage, consumers: list[Consumer] | None = None
) -> list[str]:
    """Deliver ``message`` to each consumer of its topic that has not processed it yet.

    Returns one error text per consumer that failed; an empty list means every consumer
    has it. Safe to call any number of times, also concurrently: consumers dedupe. Does not
    change the message's status (``outbox_relay`` does). Call outside a transaction:
    webhook deliveries wait on remote servers. ``consumers`` is ``consumers_for(topic)``
    when the caller has it already (a relay reads it once per topic and run).
    """
    errors = []
    for receiver in consumers_for(message.topic) if consumers is None else consumers:
        try:
            receiver.deliver(message)
        except Exception as error:
            # One failing consumer must not keep the message from the others; those that
            # succeeded are recorded and skipped when the message is retried.
            logger.warning(
                "outbox message %s (%s): consumer %s failed: %s",
                message.pk,
                message.topic,
                receiver.name,
                error,
            )
            errors.append(f"{receiver.name}: {type(error).__name__}: {error}")
    return errors


# --- Relaying -----------------------------------------------------------------------------

# Why one message per claim: the row lock is held only for the claim itself (select one due
# row with SKIP LOCKED, push next_attempt_at forward as a visibility timeout, commit), never
# across a webhook POST. Claiming a whole batch up front would make the claim of its last
# message cover the publishing of all the others, and would keep other relays from helping
# with a backlog. A claim costs one short transaction per message, small next to the
# publishing. The claimed next_attempt_at is the relay's token: the final write is a
# compare-and-set on it, so a relay whose claim expired and was taken over writes nothing.


def outbox_relay(*, batch: int = 100) -> int:
    """Publish up to ``batch`` due PENDING messages; returns how many were handled.

    A message whose consumers all have it becomes SENT; otherwise it is retried after an
    exponential backoff, and FAILED after ``OUTBOX_MAX_ATTEMPTS`` attempts. Any number of
    relays may run at once: each message is claimed by one of them. Call outside a
    transaction, so each claim commits before publishing.
    """
    handled = 0
    # The consumers of each topic, read once per run: a run is short, and a subscription
    # added meanwhile gets the messages of the next run.
    consumers: dict[str, list[Consumer]] = {}
    while handled < batch:
        claimed = _claim()
        if claimed is None:
            break
        message, token = claimed
        fault_point("outbox.before_publish")
        if message.topic not in consumers:
            consumers[message.topic] = consumers_for(message.topic)
        errors = outbox_publish(message=message, consumers=consumers[message.topic])
        fault_point("outbox.after_publish")
        if errors:
            _mark_failed(message, token, errors)
        else:
            _mark_sent(message, token)
        handled += 1
    return handled


def _claim() -> tuple[OutboxMessage, datetime] | None:
    """Take the next due message for this relay, or None when nothing is due."""
    while True:
        now = timezone.now()
        token = now + timedelta(seconds=float(_setting("OUTBOX_CLAIM_SECONDS")))
        if connection.vendor == "postgresql":
            # One statement: pick (SKIP LOCKED), move and read back.
            claimed = fetch_instances(OutboxMessage, _claim_sql(), [token, now])
            return (claimed[0], token) if claimed else None
        with transaction.atomic():
            # SKIP LOCKED: a concurrent relay takes the next message instead of waiting for
            # this one. SQLite ignores the lock; the compare-and-set still admits one claimer.
            message = (
                OutboxMessage.objects.select_for_update(skip_locked=True)
                .filter(status=Status.PENDING, next_attempt_at__lte=now)
                .order_by("next_attempt_at")
                .first()
            )
            if message is None:
                return None
            claimed = OutboxMessage.objects.filter(
                pk=message.pk, status=Status.PENDING, next_attempt_at=message.next_attempt_at
            ).update(next_attempt_at=token)
        if claimed:
            message.next_attempt_at = token
            return message, token
        # Another relay claimed it between the read and the write (SQLite only): next one.


@functools.cache
def _claim_sql() -> str:
    table = OutboxMessage._meta.db_table
    # The outer status test is re-checked on the locked row (EvalPlanQual), so a message a
    # concurrent relay finished meanwhile is not claimed again.
    return (
        f"UPDATE {table} SET next_attempt_at = %s WHERE status = '{Status.PENDING}' AND id = ("
        f"SELECT id FROM {table} WHERE status = '{Status.PENDING}' AND next_attempt_at <= %s"
        " ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
        f" {returning(OutboxMessage)}"
    )


def _mark_sent(message: OutboxMessage, token: datetime) -> None:
    _finish(message, token, status=Status.SENT, sent_at=timezone.now())


def _mark_failed(message: OutboxMessage, token: datetime, errors: list[str]) -> None:
    attempts = message.attempts + 1
    last_error = "\n".join(errors)[-_LAST_ERROR_CHARS:]
    if attempts < int(_setting("OUTBOX_MAX_ATTEMPTS")):
        retry_at = timezone.now() + timedelta(seconds=_retry_delay(attempts))
        _finish(message, token, attempts=attempts, last_error=last_error, next_attempt_at=retry_at)
    elif _finish(message, token, attempts=attempts, last_error=last_error, status=Status.FAILED):
        logger.error(
            "outbox message %s (%s) FAILED after %d attempts: %s",
            message.pk,
            message.topic,
            attempts,
            last_error,
        )


def _finish(message: OutboxMessage, token: datetime, **fields: Any) -> bool:
    """Write the outcome if this relay still holds the claim ``token``."""
    # A plain compare-and-set: the ORM's update costs more to build than to run, once per
    # message relayed.
    meta = OutboxMessage._meta
    assignments = ", ".join(f"{meta.get_field(name).column} = %s" for name in fields)
    params = [db_value(OutboxMessage, name, value) for name, value in fields.items()]
    params += [
        db_value(OutboxMessage, "id", message.pk),
        db_value(OutboxMessage, "next_attempt_at", token),
    ]
    with execute(
        f"UPDATE {meta.db_table} SET {assignments}"
        f" WHERE id = %s AND status = '{Status.PENDING}' AND next_attempt_at = %s",
        params,
    ) as cursor:
        written = cursor.rowcount
    if not written:
        # The claim expired and another relay took the message over; its outcome counts.
        logger.info("outbox message %s: claim lost before its outcome was written", message.pk)
    return bool(written)


def _retry_delay(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failure: base, 2 x base, 4 x base ... cap."""
    base = float(_setting("OUTBOX_RETRY_DELAY"))
    cap = float(_setting("OUTBOX_MAX_RETRY_DELAY"))
    # The exponent is bounded so a large attempt count cannot overflow the float.
    return min(cap, base * 2 ** min(attempts - 1, 32))


def relay_outbox_task(batch: int = 100) -> int:
    """The django-q2 entry point: relay until the due backlog is drained (or the round
    limit is reached; the next task or the schedule takes the rest)."""
    total = 0
    for _ in range(int(_setting("OUTBOX_RELAY_ROUNDS"))):
        handled = outbox_relay(batch=batch)
        total += handled
        if handled < batch:
            break
    return total


# --- Operating ----------------------------------------------------------------------------


def outbox_requeue(*, message_id: Any) -> bool:
    """Give a FAILED message a fresh set of attempts (operator action, after a fix).

    Returns False when the message is not FAILED (unknown, pending or already sent).
    Consumers that already took it are skipped on the new attempts.
    """
    requeued = OutboxMessage.objects.filter(pk=message_id, status=Status.FAILED).update(
        status=Status.PENDING, attempts=0, next_attempt_at=timezone.now()
    )
    if requeued:
        _relay_after_commit()
    return bool(requeued)


def outbox_backlog() -> dict[str, Any]:
    """Message counts per status and the age in seconds of the oldest PENDING message.

    ``{"PENDING": n, "SENT": n, "FAILED": n, "oldest_pending_age_seconds": s}``; the age
    is 0.0 when nothing is pending.
    """
    counts = dict.fromkeys(Status.values, 0)
    for row in OutboxMessage.objects.order_by().values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    oldest = OutboxMessage.objects.filter(status=Status.PENDING).aggregate(
        oldest=Min("created_at")
    )["oldest"]
    age = max(0.0, (timezone.now() - oldest).total_seconds()) if oldest else 0.0
    return {**counts, "oldest_pending_age_seconds": age}
