"""The invariants of the whole system, checked on a live database (RELIABILITY.md §6).

Each check returns the list of violations it found; all empty means the books balance.
Money is checked against the gateway's own ledger, not only our tables, so a charge we
forgot about still counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from inventory.selectors import stock_invariant_violations
from orders.models import Order
from payments.selectors import payment_ledger_violations, payments_net
from points.selectors import points_invariant_violations
from sagas.selectors import outbox_invariant_violations, saga_invariant_violations


@dataclass
class InvariantReport:
    checks: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.checks.values())


def order_money_violations() -> list[str]:
    """A paid order keeps exactly its amount due; a cancelled or failed one keeps nothing."""
    problems = []
    for order_id, status, due in Order.objects.values_list("pk", "status", "amount_due"):
        kept = payments_net(order_ref=f"order:{order_id}")
        if status == Order.Status.PAID and kept != due:
            problems.append(f"order {order_id} is PAID for {due} but keeps {kept}")
        if status in (Order.Status.CANCELLED, Order.Status.FAILED) and kept != 0:
            problems.append(f"order {order_id} is {status} but keeps {kept}")
    return problems


def invariants_check(
    *, gateway_ledger: Callable[[], dict] | None, grace_seconds: float = 60.0
) -> InvariantReport:
    """Run every check. ``gateway_ledger`` fetches the gateway's ledger; None skips it."""
    from inventory.models import Product
    from points.models import PointsAccount
    from sagas.models import OutboxMessage, SagaInstance

    report = InvariantReport()
    report.checks["stock"] = stock_invariant_violations()
    report.checks["points"] = points_invariant_violations()
    report.checks["orders"] = order_money_violations()
    if gateway_ledger is not None:
        report.checks["gateway"] = payment_ledger_violations(ledger=gateway_ledger())
    report.checks["sagas"] = saga_invariant_violations(grace_seconds=grace_seconds)
    report.checks["outbox"] = outbox_invariant_violations(grace_seconds=grace_seconds)
    report.counts = {
        "products": Product.objects.count(),
        "points accounts": PointsAccount.objects.count(),
        "orders": Order.objects.count(),
        "sagas": SagaInstance.objects.count(),
        "outbox messages": OutboxMessage.objects.count(),
    }
    return report
