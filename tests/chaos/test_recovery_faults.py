"""Processes die, servers restart, messages are lost or doubled: every saga still ends
terminal, every effect happened once, and the gateway's ledger agrees with ours."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.db import close_old_connections

from payments.models import Payment, Refund
from sagas.engine import saga_start
from sagas.models import SagaInstance
from tests import services
from tests.sagas.helpers import effects, make_counters
from tests.workers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def statuses(sagas: list[SagaInstance]) -> dict[str, str]:
    close_old_connections()
    return dict(
        SagaInstance.objects.filter(pk__in=[s.pk for s in sagas]).values_list("pk", "status")
    )


def all_terminal(sagas: list[SagaInstance]) -> bool:
    try:
        return all(status in SagaInstance.TERMINAL for status in statuses(sagas).values())
    except Exception:  # the database is restarting: not yet
        return False


def assert_each_effect_once(sagas: list[SagaInstance], steps: list[str]) -> None:
    for saga in sagas:
        counted = effects(saga)
        assert all(counted[(step, "action")] <= 1 for step in steps), (saga.pk, counted)
        assert all(counted[(step, "compensation")] <= 1 for step in steps), (saga.pk, counted)


def assert_books_balance(sagas: list[SagaInstance], gateway, amount: Decimal) -> None:
    """Per saga, on the gateway's own ledger: a completed saga was charged once, a
    compensated one was charged and refunded or never charged. Our rows agree."""
    ledger = gateway.client().ledger()
    by_key = ledger["by_key"]
    assert ledger["refunds"] <= ledger["charges"]
    for saga_id, status in statuses(sagas).items():
        key = f"{saga_id}:charge"
        entry = by_key.get(key, {"charged": "0", "refunded": "0"})
        net = Decimal(entry["charged"]) - Decimal(entry["refunded"])
        payment = Payment.objects.filter(key=key).first()
        if status == "COMPLETED":
            assert net == amount, (saga_id, entry)
            assert payment is not None and payment.status == Payment.Status.SUCCEEDED
        else:
            assert status == "COMPENSATED", (saga_id, status)
            assert net == 0, (saga_id, entry)
        assert Refund.objects.filter(payment__key=key).count() <= 1


def assert_invariants_hold(gateway) -> None:
    from orders.invariants import invariants_check

    report = invariants_check(gateway_ledger=gateway.client().ledger, grace_seconds=0)
    assert report.ok, report.checks


def start_many(name: str, count: int, **data) -> list[SagaInstance]:
    return [saga_start(name, data=data, business_key=f"chaos:{i}") for i in range(count)]


def test_killing_the_whole_cluster_with_fifty_sagas_in_flight_loses_nothing(
    qcluster_with_gateway, gateway
):
    qcluster = qcluster_with_gateway
    make_counters("m1", "m3")
    qcluster.start()
    sagas = start_many("test.payment", 50, amount="2.00", sleep={"m1": 0.05, "m3": 0.05})
    wait_for(
        lambda: sum(s == "COMPLETED" for s in statuses(sagas).values()) >= 5,
        what=lambda: f"some sagas to finish\n{qcluster.log_tail()}",
    )

    qcluster.kill()
    unfinished = sum(s not in SagaInstance.TERMINAL for s in statuses(sagas).values())
    qcluster.start()
    wait_for(
        lambda: all_terminal(sagas),
        timeout=120,
        what=lambda: f"all 50: {sorted(statuses(sagas).values())}\n{qcluster.log_tail(80)}",
    )

    assert unfinished > 0  # the kill really caught sagas in flight
    assert set(statuses(sagas).values()) == {"COMPLETED"}
    for saga in sagas:
        assert effects(saga) == {("m1", "action"): 1, ("m3", "action"): 1}
    assert_books_balance(sagas, gateway, Decimal("2.00"))
    assert_invariants_hold(gateway)


def test_a_crash_after_the_gateway_charged_and_before_we_recorded_it_charges_once(
    qcluster_with_gateway, gateway
):
    make_counters("m1", "m3")
    qcluster_with_gateway.start(SAGA_FAULTS="payment.after_gateway_charge=kill")
    saga = saga_start("test.payment", data={"amount": "25.00"}, business_key="order:crash")

    wait_for(
        lambda: gateway.client().charge_status(key=f"{saga.pk}:charge") is not None,
        what=lambda: f"the charge at the gateway\n{qcluster_with_gateway.log_tail()}",
    )
    # The worker died between the gateway's answer and our record of it.
    assert not Payment.objects.filter(key=f"{saga.pk}:charge").exists()
    assert statuses([saga])[saga.pk] == "EXECUTING"
    qcluster_with_gateway.kill()
    qcluster_with_gateway.start()  # no faults
    wait_for(lambda: all_terminal([saga]), timeout=60, what=qcluster_with_gateway.log_tail)

    assert statuses([saga])[saga.pk] == "COMPLETED"
    assert gateway.client().ledger()["charges"] == 1
    assert Payment.objects.filter(key=f"{saga.pk}:charge").count() == 1
    assert_books_balance([saga], gateway, Decimal("25.00"))


def test_a_postgresql_restart_during_two_hundred_sagas_does_nothing_twice(
    qcluster_with_gateway, gateway
):
    make_counters("m1", "m3")
    qcluster_with_gateway.start()
    sagas = start_many("test.payment", 200, amount="3.50")
    wait_for(lambda: sum(s != "STARTED" for s in statuses(sagas).values()) >= 20)

    services.pg_restart_fast()
    close_old_connections()
    wait_for(lambda: all_terminal(sagas), timeout=180, what=qcluster_with_gateway.log_tail)

    assert_each_effect_once(sagas, ["m1", "m3"])
    assert_books_balance(sagas, gateway, Decimal("3.50"))
    assert_invariants_hold(gateway)


@pytest.fixture
def redis_comes_back():
    yield
    if not services.redis_is_up():
        services.redis_start()
        wait_for(services.redis_is_up, what="Redis to come back")


def test_redis_down_for_thirty_seconds_does_nothing_twice(
    qcluster_with_gateway, gateway, redis_comes_back
):
    make_counters("m1", "m3")
    qcluster_with_gateway.start()
    sagas = start_many("test.payment", 100, amount="4.00")
    wait_for(lambda: sum(s != "STARTED" for s in statuses(sagas).values()) >= 10)

    services.redis_stop()
    during = start_many("test.payment", 20, amount="4.00")  # accepted: the broker is down
    time.sleep(30)  # the outage itself, not a wait for work
    services.redis_start()
    wait_for(services.redis_is_up, what="Redis to come back")
    everything = sagas + during
    wait_for(lambda: all_terminal(everything), timeout=180, what=qcluster_with_gateway.log_tail)

    assert_each_effect_once(everything, ["m1", "m3"])
    assert_books_balance(everything, gateway, Decimal("4.00"))
    assert_invariants_hold(gateway)


def test_redis_losing_everything_mid_run_does_nothing_twice(qcluster_with_gateway, gateway):
    make_counters("m1", "m3")
    qcluster_with_gateway.start()
    sagas = start_many("test.payment", 100, amount="5.00")
    wait_for(lambda: sum(s != "STARTED" for s in statuses(sagas).values()) >= 10)

    services.redis_flushall()  # queued tasks, locks and the dead-letter index are gone
    wait_for(lambda: all_terminal(sagas), timeout=180, what=qcluster_with_gateway.log_tail)

    assert_each_effect_once(sagas, ["m1", "m3"])
    assert_books_balance(sagas, gateway, Decimal("5.00"))
    assert_invariants_hold(gateway)


def test_an_exhausted_refund_waits_in_the_dead_letter_queue_until_the_gateway_is_back(
    qcluster_with_gateway, gateway
):
    from django.contrib.auth import get_user_model

    from sagas.deadletters import dead_letter_list, dead_letter_retry, dead_letters

    make_counters("m1", "m3")
    qcluster_with_gateway.start()
    # m3 takes 2 s before failing: time to take the gateway away before the refund runs.
    saga = saga_start(
        "test.payment",
        data={"amount": "7.00", "fail": "m3", "sleep": {"m3": 2}},
        business_key="order:dlq",
    )
    wait_for(
        lambda: gateway.client().charge_status(key=f"{saga.pk}:charge") is not None,
        what="the charge",
    )
    gateway.stop()  # the refund cannot reach the gateway
    wait_for(lambda: all_terminal([saga]), timeout=60, what=qcluster_with_gateway.log_tail)
    assert statuses([saga])[saga.pk] == "FAILED"
    assert [row["id"] for row in dead_letter_list()] == [str(saga.pk)]

    gateway.start()
    operator = get_user_model().objects.create_user("ops", password="x", is_staff=True)
    dead_letter_retry(saga_id=saga.pk, actor=operator, reason="gateway is back")
    wait_for(lambda: all_terminal([saga]), timeout=60, what=qcluster_with_gateway.log_tail)

    assert statuses([saga])[saga.pk] == "COMPENSATED"
    assert list(dead_letters()) == []
    assert dead_letter_list() == []
    assert_books_balance([saga], gateway, Decimal("7.00"))
