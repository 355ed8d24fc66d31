from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

import orders.notifications  # noqa: F401  (registers the e-mail consumer of order.paid)
from sagas.models import OutboxMessage
from sagas.outbox import (
    RELAY_TASK,
    _claim,
    _mark_failed,
    _retry_delay,
    consume_once,
    consumer,
    outbox_backlog,
    outbox_publish,
    outbox_put,
    outbox_relay,
    outbox_requeue,
    relay_outbox_task,
)
from sagas.testing import FaultInjected
from tests.concurrency import run_concurrently
from tests.outbox.helpers import make_due, processed, refreshed
from tests.sagatest.models import Counter

S = OutboxMessage.Status
EMAIL = "email:order.paid"


class Abort(Exception):
    pass


def paid(order_id: int = 42) -> OutboxMessage:
    payload = {
        "order_id": order_id,
        "customer_email": "ada@example.com",
        "total": Decimal("99.90"),
        "currency": "EUR",
    }
    return outbox_put(topic="order.paid", payload=payload, key=f"order:{order_id}")


def run_enqueued(enqueued: list[str]) -> None:
    """Run the recorded tasks the way a worker would."""
    while enqueued:
        import_string(enqueued.pop(0))()


def counting(name: str):
    """A consumer whose database effect is one increment of the counter ``name``."""
    Counter.objects.get_or_create(name=name)

    def handler(message: OutboxMessage) -> None:
        Counter.objects.filter(name=name).update(value=F("value") + 1)

    return handler


def count(name: str) -> int:
    return Counter.objects.get(name=name).value


# --- Writing ------------------------------------------------------------------------------


def test_a_message_put_in_a_transaction_that_rolls_back_is_never_written(
    transactional_db, enqueued
):
    with pytest.raises(Abort), transaction.atomic():
        paid()
        assert OutboxMessage.objects.count() == 1
        raise Abort

    assert OutboxMessage.objects.count() == 0
    assert enqueued == []


def test_messages_put_in_a_committed_transaction_are_relayed_and_sent(
    transactional_db, enqueued, mailoutbox
):
    with transaction.atomic():
        first, second = paid(1), paid(2)
        unheard = outbox_put(topic="test.nobody", payload={})
        assert enqueued == []  # nothing leaves before the commit

    assert enqueued == [RELAY_TASK]  # one prompt relay for the whole transaction
    run_enqueued(enqueued)

    for message in (first, second, unheard):
        message = refreshed(message)
        assert (message.status, message.attempts) == (S.SENT, 0)
        assert message.sent_at is not None
    assert sorted(mail.subject for mail in mailoutbox) == [
        "Your order 1 is paid",
        "Your order 2 is paid",
    ]


def test_a_rolled_back_put_does_not_suppress_the_prompt_relay_of_a_later_one(
    transactional_db, enqueued
):
    with pytest.raises(Abort), transaction.atomic():
        paid(1)
        raise Abort
    with transaction.atomic():
        with pytest.raises(Abort), transaction.atomic():
            paid(2)
            raise Abort
        paid(3)

    assert list(OutboxMessage.objects.values_list("key", flat=True)) == ["order:3"]
    assert enqueued == [RELAY_TASK]


@pytest.mark.django_db
def test_a_dedup_key_keeps_the_first_message():
    first = outbox_put(topic="test.event", payload={"n": 1}, dedup_key="order:7:paid")
    again = outbox_put(topic="test.event", payload={"n": 2}, dedup_key="order:7:paid")

    assert again.pk == first.pk
    assert again.payload == {"n": 1}
    assert OutboxMessage.objects.count() == 1


@pytest.mark.django_db
def test_the_payload_is_kept_as_the_json_consumers_read():
    message = paid()

    assert message.payload["total"] == "99.90"
    assert refreshed(message).payload["total"] == "99.90"


# --- Consumers ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_same_message_delivered_five_times_has_one_effect(mailoutbox):
    message = paid()

    for _ in range(5):
        assert outbox_publish(message=message) == []

    assert len(mailoutbox) == 1
    assert processed(message) == [EMAIL]


def test_five_concurrent_deliveries_of_one_message_have_one_effect(transactional_db, mailoutbox):
    message = paid()

    results = run_concurrently(lambda i: outbox_publish(message=message), threads=5)

    assert results == [[]] * 5
    assert len(mailoutbox) == 1
    assert processed(message) == [EMAIL]


def test_five_concurrent_relays_publish_each_message_once(transactional_db, mailoutbox):
    messages = [paid(n) for n in range(1, 11)]

    results = run_concurrently(lambda i: outbox_relay(), threads=5)

    assert sum(results) == 10, results
    assert sorted(mail.subject for mail in mailoutbox) == sorted(
        f"Your order {n} is paid" for n in range(1, 11)
    )
    for message in messages:
        assert refreshed(message).status == S.SENT
        assert processed(message) == [EMAIL]


@pytest.mark.django_db
def test_consume_once_rolls_back_the_effect_of_a_handler_that_raises():
    message = outbox_put(topic="test.event", payload={})
    effect = counting("effect")
    failures = [RuntimeError("disk full")]

    def handler(message: OutboxMessage) -> None:
        effect(message)
        if failures:
            raise failures.pop()

    with pytest.raises(RuntimeError):
        consume_once("test:handler", message, handler)
    assert count("effect") == 0
    assert processed(message) == []

    assert consume_once("test:handler", message, handler) is True
    assert consume_once("test:handler", message, handler) is False
    assert count("effect") == 1
    assert processed(message) == ["test:handler"]


def test_a_second_consumer_under_a_taken_name_is_refused(register):
    register("test.event", "test:taken", counting_free)

    with pytest.raises(ValueError, match="already registered"):
        consumer("test.event", "test:taken")(lambda message: None)


def counting_free(message: OutboxMessage) -> None:
    pass


# --- Relaying -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_message_without_consumers_is_sent():
    message = outbox_put(topic="test.nobody", payload={"n": 1})

    assert outbox_relay() == 1

    assert refreshed(message).status == S.SENT


@pytest.mark.django_db
def test_a_consumer_that_keeps_failing_ends_failed_after_three_attempts(register):
    broken = [True]
    calls = []

    def flaky(message: OutboxMessage) -> None:
        calls.append(message.pk)
        if broken[0]:
            raise RuntimeError("mail server down")

    register("test.event", "test:flaky", flaky)
    message = outbox_put(topic="test.event", payload={})

    for attempt in (1, 2, 3):
        before = timezone.now()
        assert outbox_relay() == 1
        after = timezone.now()
        message = refreshed(message)
        assert message.attempts == attempt
        assert message.last_error == "test:flaky: RuntimeError: mail server down"
        if attempt < 3:
            assert message.status == S.PENDING
            delay = timedelta(seconds=2 ** (attempt - 1))  # 1 s, then 2 s
            assert before + delay <= message.next_attempt_at <= after + delay
            assert outbox_relay() == 0  # not due before its backoff elapsed
            make_due(message)
    assert message.status == S.FAILED
    assert message.sent_at is None
    assert len(calls) == 3

    make_due(message)
    assert outbox_relay() == 0  # a FAILED message waits for an operator

    assert outbox_requeue(message_id=message.pk) is True
    message = refreshed(message)
    assert (message.status, message.attempts) == (S.PENDING, 0)
    assert outbox_requeue(message_id=message.pk) is False  # only FAILED messages

    broken[0] = False
    assert outbox_relay() == 1
    assert refreshed(message).status == S.SENT
    assert processed(message) == ["test:flaky"]


@pytest.mark.django_db
def test_the_attempt_budget_is_read_from_the_settings_when_used(register, settings):
    settings.SAGAS = {**settings.SAGAS, "OUTBOX_MAX_ATTEMPTS": 1}
    register("test.event", "test:broken", broken_handler)
    message = outbox_put(topic="test.event", payload={})

    assert outbox_relay() == 1

    assert (refreshed(message).status, message.attempts) == (S.FAILED, 1)


def broken_handler(message: OutboxMessage) -> None:
    raise ConnectionError("refused")


def test_the_backoff_doubles_from_the_base_delay_up_to_the_cap(settings):
    settings.SAGAS = {**settings.SAGAS, "OUTBOX_RETRY_DELAY": 1.0}
    assert [_retry_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert _retry_delay(10_000) == 60

    settings.SAGAS = {**settings.SAGAS, "OUTBOX_RETRY_DELAY": 0.5, "OUTBOX_MAX_RETRY_DELAY": 3}
    assert [_retry_delay(n) for n in range(1, 5)] == [0.5, 1, 2, 3]


@pytest.mark.django_db
def test_a_retry_does_not_repeat_the_consumers_that_already_succeeded(register):
    register("test.event", "test:counter", counting("counter"))
    register("test.event", "test:flaky", failing_once([RuntimeError("timeout")]))
    message = outbox_put(topic="test.event", payload={})

    assert outbox_relay() == 1
    assert refreshed(message).attempts == 1
    make_due(message)
    assert outbox_relay() == 1

    assert refreshed(message).status == S.SENT
    assert count("counter") == 1
    assert processed(message) == ["test:counter", "test:flaky"]


def failing_once(failures: list[Exception]):
    def handler(message: OutboxMessage) -> None:
        if failures:
            raise failures.pop()

    return handler


def test_a_crash_between_publishing_and_marking_sent_is_redelivered_with_one_effect(
    transactional_db, faults, mailoutbox
):
    message = paid()
    faults({"outbox.after_publish": "raise"})

    with pytest.raises(FaultInjected):
        outbox_relay()
    assert len(mailoutbox) == 1
    assert refreshed(message).status == S.PENDING
    assert outbox_relay() == 0  # still claimed by the relay that died

    faults({})
    make_due(message)  # the dead relay's claim expired
    assert outbox_relay() == 1

    assert refreshed(message).status == S.SENT
    assert len(mailoutbox) == 1
    assert processed(message) == [EMAIL]


def test_a_crash_before_publishing_leaves_the_message_to_the_next_relay(
    transactional_db, faults, mailoutbox
):
    message = paid()
    faults({"outbox.before_publish": "raise"})

    with pytest.raises(FaultInjected):
        outbox_relay()
    assert mailoutbox == []

    faults({})
    make_due(message)
    assert outbox_relay() == 1

    assert refreshed(message).status == S.SENT
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_a_relay_whose_claim_was_taken_over_does_not_overwrite_the_outcome():
    message = outbox_put(topic="test.nobody", payload={})
    slow_message, slow_token = _claim()  # a relay that then stalls past its claim
    make_due(message)

    assert outbox_relay() == 1  # another relay takes the message over and sends it
    _mark_failed(slow_message, slow_token, ["test: stale failure"])

    message = refreshed(message)
    assert (message.status, message.attempts, message.last_error) == (S.SENT, 0, "")


@pytest.mark.django_db
def test_the_relay_task_works_through_more_than_one_batch():
    messages = [outbox_put(topic="test.nobody", payload={"n": n}) for n in range(5)]

    assert relay_outbox_task(batch=2) == 5

    assert {refreshed(message).status for message in messages} == {S.SENT}


@pytest.mark.django_db
def test_the_backlog_counts_messages_per_status_and_ages_the_oldest_pending():
    assert outbox_backlog() == {
        "PENDING": 0,
        "SENT": 0,
        "FAILED": 0,
        "oldest_pending_age_seconds": 0.0,
    }
    oldest = outbox_put(topic="test.event", payload={})
    OutboxMessage.objects.filter(pk=oldest.pk).update(
        created_at=timezone.now() - timedelta(seconds=30)
    )
    outbox_put(topic="test.event", payload={})
    sent = outbox_put(topic="test.event", payload={})
    failed = outbox_put(topic="test.event", payload={})
    OutboxMessage.objects.filter(pk=sent.pk).update(status=S.SENT)
    OutboxMessage.objects.filter(pk=failed.pk).update(status=S.FAILED)

    backlog = outbox_backlog()

    assert {status: backlog[status] for status in S.values} == {
        "PENDING": 2,
        "SENT": 1,
        "FAILED": 1,
    }
    assert backlog["oldest_pending_age_seconds"] >= 30


def test_a_saga_task_relays_the_messages_its_steps_put_when_it_ends(
    transactional_db, enqueued, register
):
    from sagas.engine import saga_start
    from sagas.tasks import run_saga
    from tests.sagas.helpers import make_counters

    make_counters("a1")
    heard: list[dict] = []
    register("test.announced", "test:heard", lambda message: heard.append(message.payload))
    saga = saga_start("test.announcing", data={}, enqueue=False)

    assert run_saga(str(saga.pk)) == "COMPLETED"

    message = OutboxMessage.objects.get(topic="test.announced")
    assert message.status == S.SENT
    assert heard == [{"saga": str(saga.pk)}]
    assert enqueued == []  # relayed by the saga's own task, not by a relay task of its own


def test_a_saga_task_hands_a_backlog_beyond_its_batch_to_a_relay_task(
    transactional_db, enqueued, register
):
    from sagas.engine import saga_start
    from sagas.tasks import run_saga
    from tests.sagas.helpers import make_counters

    make_counters("a1")
    register("test.announced", "test:heard", lambda message: None)
    for n in range(12):
        outbox_put(topic="test.announced", payload={"n": n})
    enqueued.clear()
    saga = saga_start("test.announcing", data={}, enqueue=False)

    run_saga(str(saga.pk))

    # The task relayed one small batch and left the rest to a prompt relay task.
    assert OutboxMessage.objects.filter(status=S.SENT).count() == 10
    assert enqueued == [RELAY_TASK]
    run_enqueued(enqueued)
    assert not OutboxMessage.objects.exclude(status=S.SENT).exists()
