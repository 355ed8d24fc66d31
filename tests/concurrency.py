"""Run one callable from many threads at once, each on its own database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connections


def run_concurrently(target: Callable[[int], Any], threads: int) -> list[Any]:
    """Call ``target(i)`` from ``threads`` threads released together; results or exceptions."""
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = target(i)
        except BaseException as exc:  # recorded for the test to inspect
            results[i] = exc
        finally:
            connections.close_all()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    return results
