"""Run the payment gateway simulator as its own process (see ``payments.simulator``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from payments.simulator import serve


class Command(BaseCommand):
    help = "Serve the payment gateway simulator until Ctrl-C or SIGTERM."
    # It touches no model: a check failing in another app must not stop the gateway.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001, help="0 picks a free port.")
        parser.add_argument(
            "--db",
            default=str(Path(settings.VAR_DIR) / "gateway.sqlite3"),
            help="The simulator's own SQLite ledger (default: var/gateway.sqlite3).",
        )
        parser.add_argument(
            "--slow-seconds",
            type=float,
            default=65.0,
            help="How long pm_card_slow holds its answer back.",
        )
        parser.add_argument(
            "--api-key",
            default="",
            help="Require this bearer key (default: any non-empty bearer key).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        serve(
            host=options["host"],
            port=options["port"],
            db_path=options["db"],
            slow_seconds=options["slow_seconds"],
            api_key=options["api_key"],
            out=self.stdout,
        )
