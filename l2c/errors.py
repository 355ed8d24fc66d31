"""The base of every business error.

A ``DomainError`` is permanent: retrying the same call gives the same answer, so the saga
engine compensates at once instead of retrying. Anything else raised by a step is transient.
Each subclass carries a stable machine ``code`` that API clients and operators can rely on.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code: str = "domain_error"
    default_message: str = "The request breaks a business rule."

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or self.default_message
        self.extra = extra
        super().__init__(self.message)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "extra": self.extra}
