from __future__ import annotations

import pytest

from sagas import Backoff, Retry, Saga, Step
from sagas.checks import check_saga_registry, saga_problems
from sagas.registry import Registry, registry


def noop(ctx):
    return None


def test_default_policies_follow_the_design():
    step = Step("a", action=noop)
    assert step.retry.retries == 3
    assert [step.retry.delay_after(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert [step.compensation_retry.delay_after(n) for n in (1, 2, 3)] == [2, 4, 8]
    assert step.timeout == 30
    assert Saga("x", 1, (step,)).deadline == 300


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (Retry(backoff=Backoff.FIXED, delay=3, max_delay=10), [3, 3, 3]),
        (Retry(backoff=Backoff.LINEAR, delay=3, max_delay=7), [3, 6, 7]),
        (Retry(backoff=Backoff.EXPONENTIAL, delay=1, multiplier=3, max_delay=5), [1, 3, 5]),
    ],
)
def test_backoff_strategies(policy, delays):
    assert [policy.delay_after(n) for n in (1, 2, 3)] == delays


def test_random_and_jittered_delays_stay_within_their_bounds():
    random_policy = Retry(backoff=Backoff.RANDOM, delay=1, max_delay=4)
    jittered = Retry(backoff=Backoff.FIXED, delay=2, max_delay=10, jitter=0.5)
    for n in range(1, 50):
        assert 1 <= random_policy.delay_after(n) <= 4
        assert 1 <= jittered.delay_after(n) <= 3


def test_business_errors_are_never_retryable_and_retry_on_narrows_the_rest():
    from l2c.errors import DomainError

    policy = Retry(retry_on=(ConnectionError,))
    assert policy.is_retryable(ConnectionError())
    assert not policy.is_retryable(ValueError())
    assert not Retry().is_retryable(DomainError())


def test_registry_refuses_a_second_definition_under_a_taken_name_and_version():
    own = Registry()
    own.register(Saga("dup", 1, (Step("a", action=noop),)))
    own.register(Saga("dup", 1, (Step("b", action=noop),)))
    assert own.duplicates == [("dup", 1)]
    assert own.latest("dup").steps[0].name == "a"


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        (
            (
                Step("a", action=noop, compensate=noop, pivot=True),
                Step("b", action=noop, compensate=noop),
            ),
            "after the pivot",
        ),
        ((Step("a", action=noop), Step("b", action=noop)), "has no compensation"),
        (
            (Step("a", action="tests.nowhere.fn", compensate=noop), Step("b", action=noop)),
            "cannot be imported",
        ),
    ],
)
def test_badly_declared_sagas_are_reported(steps, problem):
    problems = saga_problems(Saga("bad", 1, steps))
    assert any(problem in text for text in problems), problems


def test_a_read_only_step_may_declare_nothing_to_undo_and_the_last_step_needs_no_undo():
    saga = Saga(
        "fine",
        1,
        (Step("validate", action=noop, nothing_to_undo=True), Step("write", action=noop)),
    )
    assert saga_problems(saga) == []


def test_system_check_fails_loudly_on_a_bad_registered_saga():
    bad = Saga("broken.saga", 1, (Step("a", action=noop), Step("b", action=noop)))
    registry.register(bad)
    try:
        errors = check_saga_registry()
        assert any("broken.saga" in error.msg for error in errors)
    finally:
        registry.unregister("broken.saga", 1)
    assert not [e for e in check_saga_registry() if "broken.saga" in e.msg]


def test_the_shipped_sagas_pass_the_checks():
    assert check_saga_registry() == []
