"""System checks: a badly declared saga fails at start-up, not in the middle of a transaction."""

from __future__ import annotations

from typing import Any

from django.core import checks

from sagas.definitions import Saga, resolve_callable
from sagas.registry import registry


def saga_problems(saga: Saga) -> list[str]:
    """Human-readable problems of one definition; empty when it is sound."""
    problems = []
    pivot = saga.pivot_index
    # Without a pivot the last step is the one whose success ends the saga: nothing after
    # it can fail, so it never needs undoing.
    must_compensate_until = pivot if pivot is not None else len(saga.steps) - 1
    for index, step in enumerate(saga.steps):
        label = f"{saga.name} v{saga.version} step {step.name!r}"
        if pivot is not None and index > pivot and step.compensate is not None:
            problems.append(f"{label} comes after the pivot and must not have a compensation")
        if index < must_compensate_until and step.compensate is None and not step.nothing_to_undo:
            problems.append(
                f"{label} has no compensation; declare nothing_to_undo=True if it changes nothing"
            )
        if step.resolve is not None and not step.remote:
            problems.append(f"{label} has a resolve but is not remote")
        if step.nothing_to_undo and step.compensate is not None:
            problems.append(f"{label} declares nothing_to_undo but has a compensation")
        for role in ("action", "compensate", "check", "resolve"):
            target = getattr(step, role)
            try:
                resolve_callable(target)
            except ImportError as exc:
                problems.append(f"{label}: {role} {target!r} cannot be imported ({exc})")
    if saga.on_compensated is not None:
        try:
            resolve_callable(saga.on_compensated)
        except ImportError as exc:
            problems.append(
                f"{saga.name} v{saga.version}: on_compensated cannot be imported ({exc})"
            )
    return problems


@checks.register("sagas")
def check_saga_registry(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for name, version in registry.duplicates:
        errors.append(
            checks.Error(
                f"saga {name!r} version {version} is defined twice",
                hint="Bump the version of the new definition.",
                id="sagas.E001",
            )
        )
    for saga in registry.all():
        for problem in saga_problems(saga):
            errors.append(checks.Error(problem, id="sagas.E002"))
    return errors
