"""The saga engine's public surface. Everything else in this package is internal."""

from sagas.definitions import Backoff, Priority, Retry, Saga, Step, StepContext
from sagas.registry import register, registry

__all__ = [
    "Backoff",
    "Priority",
    "Retry",
    "Saga",
    "Step",
    "StepContext",
    "register",
    "registry",
    "saga_start",
]


def __getattr__(name: str):
    # saga_start touches the ORM; import it lazily so definitions load before the app registry.
    if name == "saga_start":
        from sagas.engine import saga_start

        return saga_start
    raise AttributeError(name)
