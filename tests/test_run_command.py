"""End to end: the README's first command (``make run``, i.e. ``scripts/run.sh``).

Starts the script in its own process group on the embedded default (no DATABASE_URL, no
REDIS_URL), waits for the admin console, logs in as the demo admin, checks the payment gateway
simulator, then presses Ctrl-C (SIGINT to the group) and checks that nothing is left running:
neither in the process group nor anywhere else (found by the run's L2C_VAR_DIR in /proc).
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_DEADLINE = 180.0
SHUTDOWN_DEADLINE = 30.0
POLL_INTERVAL = 0.2
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-pass-123"
# Variables that would move the run off the embedded default or into test mode.
STRIPPED_ENV = (
    "DATABASE_URL",
    "REDIS_URL",
    "DJANGO_SETTINGS_MODULE",
    "L2C_TESTING",
    "L2C_REQUIRE_SERVICES",
)
CSRF_FIELD_RE = re.compile(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"')


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _log_tail(log_path: Path, lines: int = 60) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _run_processes(var_dir: Path) -> list[int]:
    """Live processes started by this run, wherever their process group (Linux /proc)."""
    marker = f"L2C_VAR_DIR={var_dir}".encode() + b"\0"
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _wait_until_ready(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"run.sh exited with {proc.returncode} before {url} answered\n"
                f"{_log_tail(log_path)}"
            )
        if _status(url) == 200:
            return
        time.sleep(POLL_INTERVAL)
    pytest.fail(f"{url} did not answer 200 within {STARTUP_DEADLINE:.0f} s\n{_log_tail(log_path)}")


def _admin_login(base_url: str) -> tuple[str, str]:
    """Log in through the admin form; return the final URL and the page it shows."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login_url = f"{base_url}/admin/login/?next=/admin/"
    with opener.open(login_url, timeout=10) as response:
        form_page = response.read().decode("utf-8", errors="replace")
    match = CSRF_FIELD_RE.search(form_page)
    assert match, "no csrfmiddlewaretoken in the admin login form"
    assert any(cookie.name == "csrftoken" for cookie in jar), "no csrftoken cookie was set"
    body = urllib.parse.urlencode(
        {
            "username": ADMIN_USERNAME,
            "password": ADMIN_PASSWORD,
            "csrfmiddlewaretoken": match.group(1),
            "next": "/admin/",
        }
    ).encode()
    request = urllib.request.Request(
        login_url,
        data=body,
        headers={
            "Referer": login_url,
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
    )
    with opener.open(request, timeout=10) as response:
        return response.geturl(), response.read().decode("utf-8", errors="replace")


@pytest.mark.slow
def test_make_run_serves_admin_and_gateway_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    web_port, gateway_port = _free_ports(2)
    env = {key: value for key, value in os.environ.items() if key not in STRIPPED_ENV}
    env.update(
        {
            "L2C_VAR_DIR": str(tmp_path),
            "WEB_PORT": str(web_port),
            "GATEWAY_PORT": str(gateway_port),
        }
    )
    log_path = tmp_path / "run.log"
    base_url = f"http://127.0.0.1:{web_port}"

    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", "scripts/run.sh"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pgid = proc.pid
    try:
        _wait_until_ready(f"{base_url}/admin/login/", proc, log_path)

        final_url, page = _admin_login(base_url)
        assert urllib.parse.urlsplit(final_url).path == "/admin/", (
            f"login ended on {final_url}\n{_log_tail(log_path)}"
        )
        assert "Site administration" in page, (
            f"the admin index was not shown after login\n{_log_tail(log_path)}"
        )

        gateway_health = f"http://127.0.0.1:{gateway_port}/health"
        assert _status(gateway_health) == 200, (
            f"{gateway_health} did not answer 200\n{_log_tail(log_path)}"
        )

        os.killpg(pgid, signal.SIGINT)
        try:
            proc.wait(timeout=SHUTDOWN_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"run.sh still running {SHUTDOWN_DEADLINE:.0f} s after Ctrl-C\n"
                f"{_log_tail(log_path)}"
            )
        deadline = time.monotonic() + SHUTDOWN_DEADLINE
        while (_group_alive(pgid) or _run_processes(tmp_path)) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        assert not _group_alive(pgid), (
            f"processes of the run's group were left behind after Ctrl-C\n{_log_tail(log_path)}"
        )
        left = _run_processes(tmp_path)
        assert not left, (
            f"processes {left} of the run were left behind after Ctrl-C\n{_log_tail(log_path)}"
        )
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        for pid in _run_processes(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=10)
