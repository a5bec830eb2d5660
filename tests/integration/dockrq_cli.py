"""``dockrq``: run the installed ``dockrq`` CLI on a test worker's queue and prefix."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def dockrq(redis_url, worker, *args, cwd=None, env=None, text=True, timeout: float = 120) -> subprocess.CompletedProcess:
    """``dockrq --redis-url URL --queue Q --prefix P ARGS...``, output captured (``text`` or bytes)."""
    entry = Path(sys.executable).with_name("dockrq")
    base = [str(entry)] if entry.exists() else [sys.executable, "-m", "producer.cli"]
    return subprocess.run(
        [*base, "--redis-url", redis_url, "--queue", worker.queue, "--prefix", worker.prefix, *args],
        capture_output=True, text=text, timeout=timeout, cwd=cwd, env=env,
    )


def dockrq_at_once(redis_url, worker, *calls: tuple[tuple, dict]) -> list[subprocess.CompletedProcess]:
    """Independent ``dockrq`` calls ``(args, keywords)`` run at the same time (each its own
    process, as :func:`dockrq` runs it); their results in the order given."""
    return at_once(*(partial(dockrq, redis_url, worker, *args, **kwargs) for args, kwargs in calls))


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Independent calls (each starting its own CLI process, say: a test's own ``dockrq`` helper
    with its arguments bound by :func:`functools.partial`) run at the same time, so that their
    imports overlap; their results in the order given (the first exception raised is re-raised)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]
