"""The registry of saga definitions, keyed by (name, version)."""

from __future__ import annotations

import threading

from sagas.definitions import Saga


class SagaNotRegistered(LookupError):
    pass


class Registry:
    def __init__(self) -> None:
        self._sagas: dict[tuple[str, int], Saga] = {}
        self._duplicates: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def register(self, saga: Saga) -> Saga:
        """Add ``saga``. Registering the very same object again is harmless (module reloads);
        another definition under a taken (name, version) is recorded and fails the checks."""
        with self._lock:
            key = (saga.name, saga.version)
            existing = self._sagas.get(key)
            if existing is not None and existing != saga:
                self._duplicates.append(key)
                return saga
            self._sagas[key] = saga
        return saga

    def unregister(self, name: str, version: int) -> None:
        with self._lock:
            self._sagas.pop((name, version), None)

    def get(self, name: str, version: int) -> Saga:
        try:
            return self._sagas[(name, version)]
        except KeyError:
            raise SagaNotRegistered(f"no saga {name!r} version {version}") from None

    def latest(self, name: str) -> Saga:
        versions = [saga for (n, _), saga in self._sagas.items() if n == name]
        if not versions:
            raise SagaNotRegistered(f"no saga {name!r}")
        return max(versions, key=lambda saga: saga.version)

    def all(self) -> list[Saga]:
        return sorted(self._sagas.values(), key=lambda saga: (saga.name, saga.version))

    @property
    def duplicates(self) -> list[tuple[str, int]]:
        return list(self._duplicates)


registry = Registry()


def register(saga: Saga) -> Saga:
    return registry.register(saga)
