"""Engine errors. Business failures are ``l2c.errors.DomainError``; these are the engine's own."""

from __future__ import annotations

from l2c.errors import DomainError


class SagaError(Exception):
    pass


class LeaseLost(SagaError):
    """Another runner took the saga over: this one must stop and roll back."""


class FirstRunDeclined(SagaError):
    """A new saga's first step could not take the lease with its commit (the saga is no
    longer new, or the step failed): nothing of that try was kept, and the saga takes its
    lease the usual way."""


class StepTimeout(SagaError):
    """The step ran past its timeout; counted as a transient failure."""


class StepAlreadyRecorded(SagaError):
    """The step row was written by someone else first."""


class PreconditionFailed(DomainError):
    code = "precondition_failed"
    default_message = "A step's precondition does not hold."


class SagaBusy(SagaError):
    """A worker holds the saga's lease; an operator action must wait for it."""


class InvalidIntervention(DomainError):
    code = "invalid_intervention"
    default_message = "The saga is not in a state that allows this action."
