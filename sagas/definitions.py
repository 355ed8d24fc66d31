"""Saga definitions: frozen data that the engine interprets. Pure Python, no ORM.

A saga is a name, a version and an ordered tuple of steps. Definitions are stored by
(name, version) in the registry; an instance keeps running the version it started with, so a
changed step list is a new version, never an edit of an old one.
"""

from __future__ import annotations

import enum
import importlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from l2c.errors import DomainError

StepFn = Callable[["StepContext"], Mapping[str, Any] | None]


class Backoff(enum.StrEnum):
    FIXED = "FIXED"
    LINEAR = "LINEAR"
    EXPONENTIAL = "EXPONENTIAL"
    RANDOM = "RANDOM"


class Priority(enum.IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


@dataclass(frozen=True)
class Retry:
    """How often and how soon a failed attempt is tried again.

    ``retries`` counts the attempts after the first one. Business errors (``DomainError``)
    are never retried, whatever ``retry_on`` says.
    """

    retries: int = 3
    backoff: Backoff = Backoff.EXPONENTIAL
    delay: float = 1.0
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must not be negative")
        if self.delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def is_retryable(self, error: BaseException) -> bool:
        return not isinstance(error, DomainError) and isinstance(error, self.retry_on)

    def delay_after(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based)."""
        n = max(failures, 1)
        if self.backoff is Backoff.FIXED:
            base = self.delay
        elif self.backoff is Backoff.LINEAR:
            base = self.delay * n
        elif self.backoff is Backoff.EXPONENTIAL:
            base = self.delay * self.multiplier ** (n - 1)
        else:
            base = random.uniform(self.delay, max(self.delay, self.max_delay))
        base = min(base, self.max_delay)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, min(base, self.max_delay))


# Defaults from the design documents: steps retry 3 times from 1 s doubling up to 10 s;
# compensations retry 3 times at 2, 4 and 8 s; a step may take 30 s; a saga 5 minutes.
DEFAULT_RETRY = Retry()
DEFAULT_COMPENSATION_RETRY = Retry(retries=3, delay=2.0, max_delay=8.0)
DEFAULT_STEP_TIMEOUT = 30.0
DEFAULT_SAGA_DEADLINE = 300.0


def resolve_callable(target: StepFn | str | None) -> StepFn | None:
    """A callable, or the object named by a dotted path ``package.module.name``."""
    if target is None or callable(target):
        return target
    module_name, _, attribute = target.rpartition(".")
    if not module_name:
        raise ImportError(f"{target!r} is not a dotted path")
    module = importlib.import_module(module_name)
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"{module_name} has no attribute {attribute!r}") from None
    if not callable(found):
        raise ImportError(f"{target!r} is not callable")
    return found


@dataclass(frozen=True)
class Step:
    """One local transaction of a saga and how to undo it.

    - ``action(ctx)`` does the work and returns a JSON-able mapping (or None), stored as the
      step's output and visible to later steps as ``ctx.results[name]``.
    - ``compensate(ctx)`` undoes it semantically; it must tolerate an action that never took
      effect (the engine fences that case, but a remote step's effect may be unknown).
    - ``check(ctx)`` is a precondition; False fails the step as a business error.
    - ``remote`` steps call another system: they run outside the database transaction,
      at least once, with ``ctx.key`` as the idempotency key.
    - ``resolve(ctx)`` asks the other system what became of an earlier attempt whose outcome
      is unknown (a timeout, a crash): it returns the action's output when the effect
      happened, None when it did not (then the action runs again under the same key).
    - ``pivot``: once it completes the saga only goes forward; steps after it have no
      compensation and are retried.
    - ``nothing_to_undo`` declares a step before the pivot that has no effect to compensate
      (a read-only validation).
    """

    name: str
    action: StepFn | str
    compensate: StepFn | str | None = None
    check: Callable[[StepContext], bool] | str | None = None
    resolve: StepFn | str | None = None
    retry: Retry = DEFAULT_RETRY
    compensation_retry: Retry = DEFAULT_COMPENSATION_RETRY
    timeout: float = DEFAULT_STEP_TIMEOUT
    pivot: bool = False
    remote: bool = False
    nothing_to_undo: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"step name {self.name!r} must be letters, digits, _ or -")
        if self.timeout <= 0:
            raise ValueError(f"step {self.name!r}: timeout must be positive")

    def action_fn(self) -> StepFn:
        fn = resolve_callable(self.action)
        assert fn is not None
        return fn

    def compensate_fn(self) -> StepFn | None:
        return resolve_callable(self.compensate)

    def resolve_fn(self) -> StepFn | None:
        return resolve_callable(self.resolve)

    def check_fn(self) -> Callable[[StepContext], bool] | None:
        return resolve_callable(self.check)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Saga:
    name: str
    version: int
    steps: tuple[Step, ...]
    deadline: float = DEFAULT_SAGA_DEADLINE
    priority: Priority = Priority.NORMAL
    tags: tuple[str, ...] = ()
    # Names of completed steps in the order to compensate them; reverse order when empty.
    compensation_order: tuple[str, ...] = ()
    # Called once, in the transaction that marks the saga COMPENSATED (e.g. to close the
    # business record with the reason); its context carries error_code and error_message.
    on_compensated: StepFn | str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("version starts at 1")
        if not self.steps:
            raise ValueError(f"saga {self.name!r} has no steps")
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"saga {self.name!r} repeats a step name")
        if sum(step.pivot for step in self.steps) > 1:
            raise ValueError(f"saga {self.name!r} has more than one pivot")
        unknown = set(self.compensation_order) - set(names)
        if unknown:
            raise ValueError(f"saga {self.name!r}: compensation_order names {sorted(unknown)}")

    @property
    def pivot_index(self) -> int | None:
        for index, step in enumerate(self.steps):
            if step.pivot:
                return index
        return None

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def index_of(self, name: str) -> int:
        return [step.name for step in self.steps].index(name)

    def is_forward_only(self, index: int) -> bool:
        """Steps after the pivot are never compensated, only retried forward."""
        pivot = self.pivot_index
        return pivot is not None and index > pivot

    def compensation_sequence(self, completed: list[str]) -> list[str]:
        if self.compensation_order:
            ordered = [name for name in self.compensation_order if name in completed]
            rest = [name for name in reversed(completed) if name not in ordered]
            return ordered + rest
        return list(reversed(completed))


@dataclass
class StepContext:
    """What a step function sees. ``data`` is the saga's input; ``results`` earlier outputs."""

    saga_id: str
    step: str
    key: str
    data: Mapping[str, Any]
    results: Mapping[str, Mapping[str, Any]]
    attempt: int
    timeout: float
    business_key: str = ""
    correlation_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def compensation_key(self) -> str:
        """The idempotency key of this step's compensation (a refund, a release)."""
        return f"{self.key}:compensation"
