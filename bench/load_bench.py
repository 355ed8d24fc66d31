#!/usr/bin/env python
"""Orders through the API under load: the whole stack as it is deployed, measured end to end.

Run from the repository root (about 2.5 minutes with the defaults on 2 cores):

    python bench/load_bench.py --pg-url postgresql://postgres@127.0.0.1:55432 \\
        --redis-url redis://127.0.0.1:56379/6 --duration 30 --rate 20 \\
        --web-workers 2 --q-workers 2

What it does, in order:

1. drops and creates the database ``bench_load``, flushes the Redis database given, migrates
   with ``l2c.settings.base`` (DEBUG off, JSON logs at WARNING, API throttles raised out of the
   way), loads the demo data (``manage.py load_demo``), restocks every product by 10 million
   units and gives the active demo customers a large credit limit and 100 million points;
2. starts the payment gateway simulator (its own ledger in a temporary folder), gunicorn
   (``gunicorn l2c.wsgi -w <web-workers>``, sync workers) and one ``manage.py qcluster`` with
   ``Q_WORKERS=<q-workers>``, each in its own process group, and waits until each answers;
   a few warm-up orders then go through the whole path;
3. phase A, throughput: ``--clients`` threads in a closed loop POST orders (``pm_card_visa``,
   1-2 random lines, sometimes a few points) for ``--duration`` seconds, then waits until every
   accepted order is PAID. Orders/s sustained to PAID = orders PAID / (last saga completion -
   first POST sent). CPU time is sampled from /proc for every process meanwhile, by component;
4. phase B, latency: open loop at ``--rate`` orders/s for ``--duration`` seconds, the i-th POST
   due at i/rate s and sent by a pool of ``--senders`` threads, so slow answers do not lower the
   offered rate; time to PAID per order = saga completed_at - the client's send time (the same
   clock: everything runs on this machine);
5. prints a table, writes ``bench/results/load-<timestamp>.json``, stops every process (one
   SIGTERM to its main process: for the cluster, django-q2 can deadlock on a second signal;
   SIGKILL of the process group after a deadline) and drops the database.

Every figure depends on the machine and on what else runs on it: the load average and the CPU
used by other processes are part of the output.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
DB_NAME = "bench_load"
CLUSTER_NAME = "loadbench"
TOKEN = "demo0000000000000000000000000000000000tk"  # load_demo's API user
PAYMENT_METHOD = "pm_card_visa"
RESTOCK_UNITS = 10_000_000
CREDIT_LIMIT = 1_000_000_000
POINTS_AWARD = 100_000_000
POINTS_CHOICES = (0, 0, 50, 100)
PENDING = ("PLACED", "AWAITING_PAYMENT")
SAGA_ACTIVE = ("STARTED", "EXECUTING", "COMPENSATING", "TIMEOUT")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The processes of the stack under test (the generator and the shared PostgreSQL background
# and Redis processes aside).
STACK_COMPONENTS = {
    "gunicorn master",
    "gunicorn workers",
    "qcluster workers",
    "qcluster sentinel/monitor/pusher/main",
    "gateway simulator",
    f"postgres backends ({DB_NAME})",
}
TARGET_ORDERS_PER_S = 50.0
TARGET_P95_S = 1.0


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:55432"),
        help="PostgreSQL server URL without a database name; the role needs CREATEDB",
    )
    ap.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:56379/6",
        help="Redis database for the cache, locks and broker; flushed before and after",
    )
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    ap.add_argument("--rate", type=float, default=20.0, help="phase B offered orders/s")
    ap.add_argument("--web-workers", type=int, default=2, help="gunicorn sync workers")
    ap.add_argument("--q-workers", type=int, default=2, help="django-q2 workers (one cluster)")
    ap.add_argument("--clients", type=int, default=16, help="phase A closed-loop threads")
    ap.add_argument(
        "--senders",
        type=int,
        default=200,
        help="phase B sender threads: enough that slow answers never delay a due POST",
    )
    ap.add_argument("--warmup", type=int, default=20, help="orders sent before measuring")
    ap.add_argument("--drain-timeout", type=float, default=900.0, help="longest wait for PAID (s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-a", action="store_true", help="skip phase A (throughput)")
    ap.add_argument("--skip-b", action="store_true", help="skip phase B (latency)")
    ap.add_argument("--keep-db", action="store_true", help=f"leave {DB_NAME} behind")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    args.pg_url = args.pg_url.rstrip("/")
    if not urlsplit(args.redis_url).path.strip("/"):
        args.redis_url = args.redis_url.rstrip("/") + "/6"
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# --- Database, Redis and the project's management commands --------------------------------


def pg_connect(args: argparse.Namespace, db: str = "postgres"):
    import psycopg

    return psycopg.connect(f"{args.pg_url}/{db}", autocommit=True, connect_timeout=10)


def drop_database(args: argparse.Namespace) -> None:
    with pg_connect(args) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


def create_database(args: argparse.Namespace) -> None:
    drop_database(args)
    with pg_connect(args) as c:
        c.execute(f"CREATE DATABASE {DB_NAME}")


def flush_redis(args: argparse.Namespace) -> None:
    import redis

    client = redis.Redis.from_url(args.redis_url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def environment(args: argparse.Namespace, gateway_port: int, var_dir: Path) -> dict[str, str]:
    """What every child process (and this one, for django-q2's status) is configured with."""
    return {
        "DJANGO_SETTINGS_MODULE": "l2c.settings.base",
        "DATABASE_URL": f"{args.pg_url}/{DB_NAME}",
        "REDIS_URL": args.redis_url,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "L2C_TESTING": "false",
        "L2C_VAR_DIR": str(var_dir),
        "LOG_LEVEL": "WARNING",
        "API_THROTTLE_USER": "1000000/min",
        "API_THROTTLE_ORDERS": "1000000/min",
        "PAYMENT_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
        "Q_CLUSTER_NAME": CLUSTER_NAME,
        "Q_WORKERS": str(args.q_workers),
        "CACHE_KEY_PREFIX": CLUSTER_NAME,
    }


def manage(env: dict[str, str], *argv: str, timeout: float = 600.0) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"manage.py {argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


# Runs in ``manage.py shell -c``: stock, credit and points for the benchmark, then the SKUs
# and customers to order with, as one JSON line.
SETUP_CODE = f"""
import json, uuid
from decimal import Decimal
from inventory.models import Product
from inventory.services import stock_restock
from orders.models import Customer
from points.services import points_award
run = uuid.uuid4().hex
skus = list(Product.objects.filter(active=True).order_by("sku").values_list("sku", flat=True))
for sku in skus:
    stock_restock(key=f"loadbench:{{run}}:{{sku}}", sku=sku, quantity={RESTOCK_UNITS},
                  reason="load benchmark")
customers = list(Customer.objects.filter(active=True).order_by("id").values_list("id", flat=True))
Customer.objects.filter(pk__in=customers).update(credit_limit=Decimal({CREDIT_LIMIT}))
for pk in customers:
    points_award(key=f"loadbench:{{run}}:{{pk}}", customer_id=pk, amount={POINTS_AWARD},
                 reason="load benchmark")
print("LOADBENCH " + json.dumps({{"skus": skus, "customers": customers}}))
"""


def setup_data(env: dict[str, str]) -> dict[str, Any]:
    out = manage(env, "shell", "-c", SETUP_CODE)
    for line in out.splitlines():
        if line.startswith("LOADBENCH "):
            return json.loads(line.removeprefix("LOADBENCH "))
    raise RuntimeError(f"the set-up printed no result:\n{out}")


# --- The processes under test ---------------------------------------------------------------


class Service:
    """One process started in its own session (so its group is its own pid)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self, grace: float) -> dict[str, Any]:
        """One SIGTERM to the main process, then SIGKILL to the whole group after ``grace``
        seconds (and to leftovers of the group in any case)."""
        if self.proc is None:
            return {"stopped": "never started"}
        started = time.monotonic()
        how = "already exited"
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
                how = "SIGTERM"
            except subprocess.TimeoutExpired:
                how = "SIGKILL after the deadline"
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return {"stopped": how, "seconds": round(time.monotonic() - started, 1)}


def wait_http(port: int, path: str, ok: set[int], deadline: float, service: Service) -> None:
    """Until ``GET path`` answers with one of ``ok``."""
    last = ""
    while True:
        service.check_alive()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path, headers={"Authorization": f"Token {TOKEN}"})
            response = conn.getresponse()
            response.read()
            if response.status in ok:
                return
            last = f"HTTP {response.status}"
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service.name} did not answer {path} in time ({last})")
        time.sleep(0.2)


def django_setup(env: dict[str, str]) -> None:
    """This process reads django-q2's cluster status from Redis the way the cluster writes
    it, so it needs the same settings (and secret key: the status is signed)."""
    os.environ.update(env)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()


def cluster_status(pid: int) -> Any:
    from django_q.status import Stat

    for stat in Stat.get_all():
        if stat.pid == pid:
            return stat
    return None


def wait_cluster(service: Service, workers: int, deadline: float) -> dict[str, Any]:
    from django_q.conf import Conf

    while True:
        service.check_alive()
        stat = cluster_status(service.pid)
        if stat and stat.status in (Conf.IDLE, Conf.WORKING) and len(stat.workers) >= workers:
            return {
                "sentinel": stat.sentinel,
                "monitor": stat.monitor,
                "pusher": stat.pusher,
                "workers": list(stat.workers),
            }
        if time.monotonic() > deadline:
            raise TimeoutError("qcluster did not report its workers in time")
        time.sleep(0.2)


# --- CPU by component, from /proc -----------------------------------------------------------


def proc_stat(pid: str) -> tuple[int, int, float] | None:
    """(parent, process group, user+system CPU seconds) of one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    # proc(5): rest[0] is field 3 (state); ppid 4, pgrp 5, utime 14, stime 15.
    return int(rest[1]), int(rest[2]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / CLK_TCK, sum(fields) / CLK_TCK


class CpuSampler:
    """User+system CPU seconds of every process on the machine while a phase runs, sampled
    every ``interval`` s and attributed to a component, so a process that exits meanwhile
    (a recycled worker, a backend whose connection closed) counts up to its last sample."""

    def __init__(self, roles: dict[str, Any], interval: float = 0.5):
        self.roles = roles
        self.interval = interval
        self.seen: dict[str, list[Any]] = {}  # pid -> [component, base, last]
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def component(self, pid: int, ppid: int, pgrp: int) -> str:
        r = self.roles
        if pid == os.getpid():
            return "load generator (this script)"
        if pgrp == r["gunicorn"]:
            return "gunicorn master" if pid == r["gunicorn"] else "gunicorn workers"
        if pgrp == r["qcluster"]:
            if pid in r["q_workers"]:
                return "qcluster workers"
            if pid in (r["q_sentinel"], r["q_monitor"], r["q_pusher"], r["qcluster"]):
                return "qcluster sentinel/monitor/pusher/main"
            if ppid == r["q_sentinel"]:
                return "qcluster workers"  # one started after a recycle
            return "qcluster sentinel/monitor/pusher/main"
        if pgrp == r["simulator"]:
            return "gateway simulator"
        if pid == r["postmaster"]:
            return "postgres background"
        if ppid == r["postmaster"]:
            line = read_text(f"/proc/{pid}/cmdline")
            if DB_NAME in line:
                return f"postgres backends ({DB_NAME})"
            if "(" in line:
                return "postgres backends (other databases)"
            return "postgres background"
        if read_text(f"/proc/{pid}/comm").startswith("redis-server"):
            return "redis-server"
        return "other processes on the machine"

    def scan(self, first: bool = False) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            stat = proc_stat(pid)
            if stat is None:
                continue
            ppid, pgrp, cpu = stat
            entry = self.seen.get(pid)
            if entry is None:
                # There at the start: count from now; born later: count all of it.
                self.seen[pid] = [self.component(int(pid), ppid, pgrp), cpu if first else 0.0, cpu]
            else:
                entry[2] = cpu

    def loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.scan()

    def start(self) -> CpuSampler:
        self.wall0 = time.monotonic()
        self.machine0 = machine_cpu()
        self.scan(first=True)
        self.thread = threading.Thread(target=self.loop, name="cpu-sampler", daemon=True)
        self.thread.start()
        return self

    def stop(self, orders: int) -> dict[str, Any]:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.scan()
        wall = time.monotonic() - self.wall0
        machine1 = machine_cpu()
        by: dict[str, float] = defaultdict(float)
        for component, base, last in self.seen.values():
            by[component] += max(0.0, last - base)
        busy = machine1[0] - self.machine0[0]
        total = machine1[1] - self.machine0[1]
        n = max(1, orders)
        stack = sum(v for k, v in by.items() if k in STACK_COMPONENTS)
        cores = os.cpu_count() or 1
        return {
            "wall_s": round(wall, 1),
            "machine_busy_pct": round(100 * busy / total, 1) if total else None,
            "stack_cpu_ms_per_order": round(1000 * stack / n, 1),
            # What the measured CPU cost per order allows if the stack had every core.
            "stack_cpu_bound_orders_per_s": round(cores * n / stack, 1) if stack else None,
            "other_work_cores": round(
                sum(v for k, v in by.items() if k not in STACK_COMPONENTS) / wall, 2
            )
            if wall
            else None,
            "components": {
                name: {
                    "cpu_s": round(seconds, 2),
                    "cores": round(seconds / wall, 2) if wall else None,
                    "share_pct": round(100 * seconds / busy, 1) if busy else None,
                    "cpu_ms_per_order": round(1000 * seconds / n, 2),
                }
                for name, seconds in sorted(by.items(), key=lambda kv: -kv[1])
                if seconds >= 0.01
            },
        }


# --- Load generation ------------------------------------------------------------------------


class ApiClient:
    """One keep-alive HTTP/1.1 connection (gunicorn's sync workers close it after each
    answer; http.client then reconnects on the next request)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post_order(self, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        headers = {
            "Authorization": f"Token {TOKEN}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        sent = time.time()
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", "/api/orders/", body=payload, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            return {
                "sent": sent,
                "latency": time.perf_counter() - t0,
                "status": 0,
                "error": repr(exc),
            }
        record: dict[str, Any] = {
            "sent": sent,
            "latency": time.perf_counter() - t0,
            "status": response.status,
        }
        if response.status == 202:
            record["order_id"] = json.loads(data)["id"]
        else:
            record["error"] = data[:300].decode(errors="replace")
        return record

    def close(self) -> None:
        self.conn.close()


class OrderMaker:
    def __init__(self, skus: list[str], customers: list[int], seed: int):
        self.skus = skus
        self.customers = customers
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        with self.lock:
            lines = self.rng.sample(self.skus, self.rng.choice((1, 2)))
            return {
                "customer": self.rng.choice(self.customers),
                "items": [{"sku": sku, "quantity": self.rng.randint(1, 3)} for sku in lines],
                "points_to_use": self.rng.choice(POINTS_CHOICES),
                "payment_method": PAYMENT_METHOD,
            }


def closed_loop(port: int, make: OrderMaker, clients: int, duration: float) -> list[dict]:
    """``clients`` threads, each sending its next order as soon as the last one answered."""
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    end: list[float] = []

    def work() -> None:
        client = ApiClient(port)
        mine: list[dict[str, Any]] = []
        start.wait()
        while time.monotonic() < end[0]:
            mine.append(client.post_order(make()))
        client.close()
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=work, name=f"client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    end.append(time.monotonic() + duration)
    start.wait()
    for t in threads:
        t.join()
    return records


def open_loop(port: int, make: OrderMaker, rate: float, duration: float, senders: int) -> list:
    """POST i is due at t0 + i/rate, whatever happened to the POSTs before it; a pool of
    ``senders`` threads takes the next due POST in turn."""
    n = max(1, round(rate * duration))
    bodies = [make() for _ in range(n)]
    counter = itertools.count()
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    t0 = time.monotonic() + 0.5

    def work() -> None:
        client = ApiClient(port)
        mine: list[dict[str, Any]] = []
        while (i := next(counter)) < n:
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            late = time.monotonic() - due
            record = client.post_order(bodies[i])
            record["late"] = late
            mine.append(record)
        client.close()
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=work, name=f"sender-{i}") for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def status_counts(db, ids: list[int]) -> Counter[str]:
    rows = db.execute(
        "SELECT status, count(*) FROM orders_order WHERE id = ANY(%s) GROUP BY status", [ids]
    ).fetchall()
    return Counter({status: count for status, count in rows})


def sagas_running(db, ids: list[int]) -> int:
    """Place-order sagas of ``ids`` not finished yet (the order is PAID one step before its
    saga completes)."""
    return db.execute(
        "SELECT count(*) FROM sagas_sagainstance WHERE business_key = ANY(%s) "
        "AND definition = 'orders.place_order' AND status = ANY(%s)",
        [[f"order:{i}" for i in ids], list(SAGA_ACTIVE)],
    ).fetchone()[0]


def wait_settled(db, ids: list[int], timeout: float) -> tuple[Counter[str], float]:
    """Until no order of ``ids`` is still on its way (PLACED or AWAITING_PAYMENT) and every
    one of their sagas has finished."""
    started = time.monotonic()
    last_log = started
    while True:
        counts = status_counts(db, ids)
        pending = sum(counts[s] for s in PENDING)
        if not pending and not sagas_running(db, ids):
            return counts, time.monotonic() - started
        now = time.monotonic()
        if now - started > timeout:
            log(f"  gave up waiting: {dict(counts)}")
            return counts, now - started
        if now - last_log > 10:
            log(f"  waiting for PAID: {dict(counts)}")
            last_log = now
        time.sleep(0.5)


def order_times(db, ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = db.execute(
        """
        SELECT o.id, o.status, extract(epoch FROM o.created_at)::float8,
               extract(epoch FROM o.updated_at)::float8, s.status,
               extract(epoch FROM s.created_at)::float8,
               extract(epoch FROM s.completed_at)::float8
        FROM orders_order o
        LEFT JOIN sagas_sagainstance s
          ON s.business_key = 'order:' || o.id AND s.definition = 'orders.place_order'
        WHERE o.id = ANY(%s)
        """,
        [ids],
    ).fetchall()
    return {
        r[0]: {
            "status": r[1],
            "created": r[2],
            "updated": r[3],
            "saga_status": r[4],
            "saga_created": r[5],
            "completed": r[6],
        }
        for r in rows
    }


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def dist_ms(values: list[float]) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(1000 * v, 1)

    return {
        "n": len(values),
        "p50_ms": ms(pct(values, 0.50)),
        "p95_ms": ms(pct(values, 0.95)),
        "p99_ms": ms(pct(values, 0.99)),
        "max_ms": ms(max(values) if values else None),
        "mean_ms": ms(statistics.fmean(values) if values else None),
    }


def summarize(records: list[dict], times: dict[int, dict], settle_s: float) -> dict[str, Any]:
    ok = [r for r in records if r.get("order_id")]
    statuses = Counter(str(r["status"]) for r in records)
    errors = Counter(r.get("error", "")[:120] for r in records if not r.get("order_id"))
    first_sent = min((r["sent"] for r in records), default=None)
    last_answer = max((r["sent"] + r["latency"] for r in records), default=None)
    paid = [(r, times[r["order_id"]]) for r in ok if times.get(r["order_id"], {}).get("completed")]
    paid = [(r, t) for r, t in paid if t["status"] == "PAID"]
    last_completed = max((t["completed"] for _, t in paid), default=None)
    span = (last_completed - first_sent) if paid else None
    order_states = Counter(times[r["order_id"]]["status"] for r in ok if r["order_id"] in times)
    return {
        "posts": len(records),
        "http_status": dict(statuses),
        "errors": dict(errors.most_common(5)),
        "accepted": len(ok),
        "post_rate_per_s": round(len(records) / (last_answer - first_sent), 1)
        if records and last_answer > first_sent
        else None,
        "order_status": dict(order_states),
        "paid": len(paid),
        "first_post_to_last_paid_s": round(span, 2) if span else None,
        "orders_per_s_to_paid": round(len(paid) / span, 1) if span else None,
        "drain_after_load_s": round(last_completed - last_answer, 2) if paid else None,
        "settle_wait_s": round(settle_s, 1),
        "post_latency": dist_ms([r["latency"] for r in records if r["status"] == 202]),
        # Client's send time -> saga COMPLETED (the order is PAID one step earlier).
        "time_to_paid": dist_ms([t["completed"] - r["sent"] for r, t in paid]),
        # Client's send time -> the order row's last write (its PAID transition).
        "time_to_order_paid": dist_ms([t["updated"] - r["sent"] for r, t in paid]),
        # Server side only: order created_at -> saga completed_at.
        "created_to_completed": dist_ms([t["completed"] - t["created"] for _, t in paid]),
        # HTTP answer received -> saga completed: what a client polling the order waits.
        "answer_to_completed": dist_ms(
            [t["completed"] - (r["sent"] + r["latency"]) for r, t in paid]
        ),
    }


def completions_per_second(times: dict[int, dict], t_from: float, t_to: float) -> float | None:
    """PAID completions per second inside a window of the load (steady state, no tails)."""
    if t_to <= t_from:
        return None
    n = sum(1 for t in times.values() if t["completed"] and t_from <= t["completed"] < t_to)
    return round(n / (t_to - t_from), 1)


# --- Output ---------------------------------------------------------------------------------


def fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{suffix}"
    return f"{value}{suffix}"


def print_report(result: dict[str, Any]) -> None:
    cfg = result["config"]
    rows: list[tuple[str, str]] = []
    a = result.get("phase_a")
    b = result.get("phase_b")
    if a:
        target = "met" if (a["orders_per_s_to_paid"] or 0) >= TARGET_ORDERS_PER_S else "MISSED"
        rows += [
            (f"Phase A: closed loop, {cfg['clients']} clients, {cfg['duration']:g} s", ""),
            ("  POSTs sent / accepted (202)", f"{a['posts']} / {a['accepted']}"),
            ("  POST rate (answers/s)", fmt(a["post_rate_per_s"])),
            ("  orders PAID", f"{a['paid']}  {a['order_status']}"),
            (
                "  orders/s sustained to PAID",
                f"{fmt(a['orders_per_s_to_paid'])}  (target >= {TARGET_ORDERS_PER_S:g}: {target})",
            ),
            ("  PAID/s while loaded (steady window)", fmt(a["steady_paid_per_s"])),
            ("  first POST -> last PAID", fmt(a["first_post_to_last_paid_s"], " s")),
            ("  backlog drained after the load", fmt(a["drain_after_load_s"], " s")),
            (
                "  POST latency p50 / p95",
                f"{fmt(a['post_latency']['p50_ms'])} / {fmt(a['post_latency']['p95_ms'])} ms",
            ),
        ]
    if b:
        t = b["time_to_paid"]
        ok = t["p95_ms"] is not None and t["p95_ms"] < 1000 * TARGET_P95_S
        rows += [
            (f"Phase B: open loop at {cfg['rate']:g}/s, {cfg['duration']:g} s", ""),
            ("  POSTs sent / accepted (202)", f"{b['posts']} / {b['accepted']}"),
            ("  offered rate achieved", f"{fmt(b['offered_rate_per_s'])}/s"),
            (
                "  sends later than due: >50 ms / max",
                f"{b['late_over_50ms']} / {b['late_max_ms']} ms",
            ),
            ("  orders PAID", f"{b['paid']}  {b['order_status']}"),
            (
                "  POST latency p50 / p95",
                f"{fmt(b['post_latency']['p50_ms'])} / {fmt(b['post_latency']['p95_ms'])} ms",
            ),
            (
                "  time to PAID p50 / p95 / p99 / max",
                f"{fmt(t['p50_ms'])} / {fmt(t['p95_ms'])} / {fmt(t['p99_ms'])} / "
                f"{fmt(t['max_ms'])} ms  (target p95 < {TARGET_P95_S * 1000:g}: "
                f"{'met' if ok else 'MISSED'})",
            ),
            (
                "  order row PAID p50 / p95",
                f"{fmt(b['time_to_order_paid']['p50_ms'])} / "
                f"{fmt(b['time_to_order_paid']['p95_ms'])} ms",
            ),
            (
                "  created_at -> completed_at p50 / p95",
                f"{fmt(b['created_to_completed']['p50_ms'])} / "
                f"{fmt(b['created_to_completed']['p95_ms'])} ms",
            ),
        ]
    for key, phase in (("phase_a", a), ("phase_b", b)):
        if not phase:
            continue
        sg = phase["saga"]
        st = phase["saga"]["steps_ms"]
        rows += [
            (f"Saga timing, {key.replace('_', ' ')} (p50 / p95)", ""),
            (
                "  waiting for a worker",
                f"{fmt(sg['queue_wait']['p50_ms'])} / {fmt(sg['queue_wait']['p95_ms'])} ms",
            ),
            (
                "  running (first step -> completed)",
                f"{fmt(sg['run']['p50_ms'])} / {fmt(sg['run']['p95_ms'])} ms",
            ),
            (
                "  of which inside steps",
                f"{fmt(sg['in_steps']['p50_ms'])} / {fmt(sg['in_steps']['p95_ms'])} ms",
            ),
            (
                "  step p50 ms",
                ", ".join(f"{name} {v['p50']:g}" for name, v in st.items()),
            ),
            (
                "  DB per order",
                ", ".join(f"{k} {v:g}" for k, v in phase["db_per_order"].items() if v),
            ),
            (
                "  stack CPU per order / CPU-bound ceiling",
                f"{fmt(phase['cpu']['stack_cpu_ms_per_order'])} ms / "
                f"{fmt(phase['cpu']['stack_cpu_bound_orders_per_s'])} orders/s on "
                f"{result['machine']['cores']} cores",
            ),
        ]
    m = result["machine"]
    rows += [
        ("Machine", f"{m['cores']} cores, {m['cpu_model']}"),
        ("  load average before", " ".join(f"{x:.2f}" for x in m["loadavg_before"])),
        ("  load average after", " ".join(f"{x:.2f}" for x in m.get("loadavg_after", []))),
        ("  PostgreSQL", ", ".join(f"{k}={v}" for k, v in m.get("postgres", {}).items())),
    ]
    width = max(len(k) for k, _ in rows) + 2
    print()
    print("Orders through the API (load)")
    for k, v in rows:
        print(f"{k:<{width}}{v}")
    for phase in ("phase_a", "phase_b"):
        cpu = (result.get(phase) or {}).get("cpu")
        if not cpu:
            continue
        print()
        print(
            f"CPU during {phase.replace('_', ' ')} ({cpu['wall_s']} s, machine "
            f"{cpu['machine_busy_pct']}% busy, {cpu['other_work_cores']} cores to work "
            f"outside the stack)"
        )
        print(f"  {'component':<42}{'cpu s':>8}{'cores':>7}{'share':>7}{'ms/order':>10}")
        for name, c in cpu["components"].items():
            print(
                f"  {name:<42}{c['cpu_s']:>8.1f}{c['cores']:>7.2f}"
                f"{fmt(c['share_pct'], '%'):>7}{c['cpu_ms_per_order']:>10.1f}"
            )
    print()


# --- Main -----------------------------------------------------------------------------------


def db_counters(db) -> dict[str, int]:
    """Cumulative counters of the bench database (PostgreSQL flushes them within ~1 s)."""
    row = db.execute(
        "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, "
        "tup_returned, tup_fetched, deadlocks FROM pg_stat_database WHERE datname = %s",
        [DB_NAME],
    ).fetchone()
    names = ("commits", "rollbacks", "inserted", "updated", "deleted", "returned", "fetched")
    return dict(zip((*names, "deadlocks"), row, strict=True))


def db_per_order(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    n = max(1, n)
    return {k: round((after[k] - before[k]) / n, 1) for k in before}


def saga_breakdown(db, ids: list[int]) -> dict[str, Any]:
    """Where each order's saga spent its time: waiting for a worker, inside its steps, and
    in the engine between them; and each step's own duration."""
    keys = [f"order:{i}" for i in ids]
    rows = db.execute(
        """
        SELECT extract(epoch FROM s.created_at)::float8,
               extract(epoch FROM min(st.started_at))::float8,
               extract(epoch FROM s.completed_at)::float8,
               coalesce(sum(st.duration_ms), 0)::float8, s.runs
        FROM sagas_sagainstance s JOIN sagas_sagastep st ON st.saga_id = s.id
        WHERE s.business_key = ANY(%s) AND s.definition = 'orders.place_order'
          AND s.completed_at IS NOT NULL
        GROUP BY s.id
        """,
        [keys],
    ).fetchall()
    steps = db.execute(
        """
        SELECT st.name, min(st.index), count(*), avg(st.duration_ms)::float8,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY st.duration_ms)::float8,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY st.duration_ms)::float8
        FROM sagas_sagastep st JOIN sagas_sagainstance s ON s.id = st.saga_id
        WHERE s.business_key = ANY(%s) AND s.definition = 'orders.place_order'
        GROUP BY st.name ORDER BY 2
        """,
        [keys],
    ).fetchall()
    return {
        "sagas": len(rows),
        "runs_per_saga": round(statistics.fmean(r[4] for r in rows), 2) if rows else None,
        "queue_wait": dist_ms([r[1] - r[0] for r in rows]),
        "run": dist_ms([r[2] - r[1] for r in rows]),
        "in_steps": dist_ms([r[3] / 1000 for r in rows]),
        "steps_ms": {
            name: {
                "n": n,
                "mean": round(mean or 0, 1),
                "p50": round(p50 or 0, 1),
                "p95": round(p95 or 0, 1),
            }
            for name, _, n, mean, p50, p95 in steps
        },
    }


def run_phase(args, db, roles, label: str, generate) -> dict[str, Any]:
    """Send the load, wait until every accepted order is settled, then measure."""
    counters0 = db_counters(db)
    sampler = CpuSampler(roles).start()
    records = generate()
    ids = [r["order_id"] for r in records if r.get("order_id")]
    log(f"  {len(records)} POSTs, {len(ids)} accepted; waiting until they are PAID")
    counts, settle = wait_settled(db, ids, args.drain_timeout)
    times = order_times(db, ids)
    summary = summarize(records, times, settle)
    summary["cpu"] = sampler.stop(summary["paid"])
    time.sleep(1.2)  # let the backends flush their statistics
    summary["db_per_order"] = db_per_order(counters0, db_counters(db), summary["paid"])
    summary["saga"] = saga_breakdown(db, ids)
    summary["_records"] = records
    summary["_times"] = times
    log(f"  {label}: {summary['paid']} PAID {dict(counts)}")
    return summary


def run_phase_a(args, port, make, db, roles) -> dict[str, Any]:
    log(f"phase A: closed loop, {args.clients} clients, {args.duration:g} s")
    summary = run_phase(
        args, db, roles, "phase A", lambda: closed_loop(port, make, args.clients, args.duration)
    )
    records, times = summary.pop("_records"), summary.pop("_times")
    first = min(r["sent"] for r in records)
    last = max(r["sent"] + r["latency"] for r in records)
    # Completions while POSTs were still coming in, minus a 5 s ramp-up.
    summary["steady_paid_per_s"] = completions_per_second(times, first + 5, last)
    log(f"  {fmt(summary['orders_per_s_to_paid'])} orders/s sustained to PAID")
    return summary


def run_phase_b(args, port, make, db, roles) -> dict[str, Any]:
    log(f"phase B: open loop at {args.rate:g}/s for {args.duration:g} s")
    summary = run_phase(
        args,
        db,
        roles,
        "phase B",
        lambda: open_loop(port, make, args.rate, args.duration, args.senders),
    )
    records = summary.pop("_records")
    summary.pop("_times")
    sends = sorted(r["sent"] for r in records)
    summary["offered_rate_per_s"] = (
        round((len(sends) - 1) / (sends[-1] - sends[0]), 2) if len(sends) > 1 else None
    )
    summary["late_over_50ms"] = sum(1 for r in records if r["late"] > 0.05)
    summary["late_max_ms"] = round(1000 * max(r["late"] for r in records), 1)
    log(
        f"  time to PAID p50 {fmt(summary['time_to_paid']['p50_ms'])} ms, "
        f"p95 {fmt(summary['time_to_paid']['p95_ms'])} ms"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="l2c-load-bench-"))
    result: dict[str, Any] = {
        "bench": "orders through the API (load)",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "duration": args.duration,
            "rate": args.rate,
            "web_workers": args.web_workers,
            "q_workers": args.q_workers,
            "clients": args.clients,
            "senders": args.senders,
            "warmup": args.warmup,
            "payment_method": PAYMENT_METHOD,
            "points_choices": POINTS_CHOICES,
            "settings": "l2c.settings.base (DEBUG off, LOG_LEVEL=WARNING)",
            "command": "python bench/load_bench.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
        },
        "machine": {**machine_info(), "loadavg_before": loadavg()},
    }
    log(f"load average {result['machine']['loadavg_before']}, logs in {tmp}")

    services: dict[str, Service] = {}
    stopping = threading.Event()

    def on_signal(signum, frame):  # Ctrl-C or a TERM: clean up through the finally below
        if not stopping.is_set():
            stopping.set()
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    db = None
    try:
        gateway_port, web_port = free_port(), free_port()
        env = environment(args, gateway_port, tmp / "var")
        log(f"creating {DB_NAME}, flushing {args.redis_url}, migrating, loading the demo data")
        create_database(args)
        flush_redis(args)
        t0 = time.monotonic()
        manage(env, "migrate", "--noinput")
        manage(env, "load_demo")
        data = setup_data(env)
        log(
            f"  set up in {time.monotonic() - t0:.1f} s: {len(data['skus'])} products, "
            f"customers {data['customers']}"
        )
        result["data"] = data

        services["simulator"] = Service(
            "gateway simulator",
            [
                sys.executable,
                "manage.py",
                "gateway_simulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(gateway_port),
                "--db",
                str(tmp / "gateway.sqlite3"),
            ],
            env,
            tmp / "simulator.log",
        ).start()
        services["gunicorn"] = Service(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "l2c.wsgi",
                "-w",
                str(args.web_workers),
                "-b",
                f"127.0.0.1:{web_port}",
                "--error-logfile",
                "-",
            ],
            env,
            tmp / "gunicorn.log",
        ).start()
        services["qcluster"] = Service(
            "qcluster", [sys.executable, "manage.py", "qcluster"], env, tmp / "qcluster.log"
        ).start()

        deadline = time.monotonic() + 120
        wait_http(gateway_port, "/health", {200}, deadline, services["simulator"])
        customer = data["customers"][0]
        wait_http(web_port, f"/api/customers/{customer}/", {200}, deadline, services["gunicorn"])
        django_setup(env)
        q_roles = wait_cluster(services["qcluster"], args.q_workers, deadline)
        log(
            f"  up: simulator :{gateway_port}, gunicorn :{web_port} "
            f"({args.web_workers} workers), qcluster ({len(q_roles['workers'])} workers)"
        )

        db = pg_connect(args, DB_NAME)
        result["machine"]["postgres"] = {
            name: db.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
        backend = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        stat = proc_stat(str(backend))
        roles = {
            "gunicorn": services["gunicorn"].pid,
            "qcluster": services["qcluster"].pid,
            "simulator": services["simulator"].pid,
            "q_sentinel": q_roles["sentinel"],
            "q_monitor": q_roles["monitor"],
            "q_pusher": q_roles["pusher"],
            "q_workers": set(q_roles["workers"]),
            "postmaster": stat[0] if stat else -1,
        }
        make = OrderMaker(data["skus"], data["customers"], args.seed)

        if args.warmup:
            log(f"warm-up: {args.warmup} orders")
            warm = open_loop(web_port, make, 10.0, args.warmup / 10.0, 4)
            ids = [r["order_id"] for r in warm if r.get("order_id")]
            if not ids:
                raise RuntimeError(f"no warm-up order was accepted: {warm[:3]}")
            counts, _ = wait_settled(db, ids, 180)
            log(f"  warm-up orders: {dict(counts)}")
            if counts["PAID"] != len(ids):
                raise RuntimeError(f"warm-up orders did not all get PAID: {dict(counts)}")

        if not args.skip_a:
            result["phase_a"] = run_phase_a(args, web_port, make, db, roles)
            time.sleep(2)
        if not args.skip_b:
            result["phase_b"] = run_phase_b(args, web_port, make, db, roles)
        result["machine"]["loadavg_after"] = loadavg()
    except KeyboardInterrupt:
        log("interrupted: stopping")
        result["interrupted"] = True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        result["machine"].setdefault("loadavg_after", loadavg())
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()
        stops = {}
        # Web first (no new orders), then the cluster (one SIGTERM: django-q2 can deadlock
        # when a second signal lands while it handles the first), then the gateway.
        for name, grace in (("gunicorn", 15.0), ("qcluster", 30.0), ("simulator", 10.0)):
            if name in services:
                stops[name] = services[name].stop(grace)
        result["shutdown"] = stops
        log(f"stopped: {stops}")
        if not args.keep_db:
            with contextlib.suppress(Exception):
                drop_database(args)
            with contextlib.suppress(Exception):
                flush_redis(args)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"load-{stamp}.json"
    for phase in ("phase_a", "phase_b"):
        if phase in result:
            result[phase]["http_status"] = dict(result[phase]["http_status"])
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if "phase_a" in result or "phase_b" in result:
        print_report(result)
    log(f"results written to {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 1 if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
