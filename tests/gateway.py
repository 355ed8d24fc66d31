"""The payment gateway simulator as a separate process, as the real gateway would be."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from payments.gateway import GatewayClient

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk_test_payments"
STARTUP_DEADLINE_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """``manage.py gateway_simulator`` on a fixed port with its own ledger file; it can be
    stopped and started again on the same port and ledger (an outage)."""

    def __init__(self, directory: Path, *, slow_seconds: float = 3.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ledger_path = directory / "gateway.sqlite3"
        self.log_path = directory / "gateway.log"
        self.slow_seconds = slow_seconds
        self.process: subprocess.Popen[bytes] | None = None

    def client(self, timeout: float = 10.0) -> GatewayClient:
        return GatewayClient(base_url=self.url, api_key=API_KEY, timeout=timeout)

    def start(self) -> GatewayProcess:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "l2c.settings.test", "L2C_TESTING": "true"}
        log = open(self.log_path, "ab")  # noqa: SIM115  (closed by the child's exit)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "gateway_simulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--db",
                str(self.ledger_path),
                "--slow-seconds",
                str(self.slow_seconds),
                "--api-key",
                API_KEY,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        probe = self.client(timeout=1.0)
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while not probe.health():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the gateway simulator exited with {self.process.returncode} on start"
                )
            if time.monotonic() > deadline:
                raise AssertionError("the gateway simulator did not answer /health in time")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
