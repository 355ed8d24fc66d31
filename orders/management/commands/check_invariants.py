"""Check the system's invariants on the live database; exit 1 when any is violated."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from orders.invariants import invariants_check
from payments.exceptions import GatewayError
from payments.gateway import gateway_client


class Command(BaseCommand):
    help = (
        "Check stock, money (against the payment gateway's ledger), points, saga "
        "termination and outbox delivery; print the counts and exit 1 on any violation."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--skip-gateway",
            action="store_true",
            help="Do not compare our payments with the gateway's ledger.",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=60.0,
            help="Seconds a saga or outbox message may still be in flight (default 60).",
        )

    def handle(self, *args, **options):
        if options["grace"] < 0:
            raise CommandError("--grace must not be negative")
        ledger = None
        if not options["skip_gateway"]:
            client = gateway_client()

            def ledger():
                try:
                    return client.ledger()
                except GatewayError as exc:
                    raise CommandError(
                        f"the payment gateway at {client.base_url} did not answer ({exc}); "
                        "start it or pass --skip-gateway"
                    ) from exc

        report = invariants_check(gateway_ledger=ledger, grace_seconds=options["grace"])
        for name, count in report.counts.items():
            self.stdout.write(f"{name:>16}: {count}")
        for check, problems in report.checks.items():
            verdict = self.style.SUCCESS("ok") if not problems else self.style.ERROR("VIOLATED")
            self.stdout.write(f"{check:>16}: {verdict} ({len(problems)} violations)")
            for problem in problems[:20]:
                self.stdout.write(f"{'':>18}- {problem}")
            if len(problems) > 20:
                self.stdout.write(f"{'':>18}... and {len(problems) - 20} more")
        if not report.ok:
            raise SystemExit(1)
