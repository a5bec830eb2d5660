"""``dockrq``: run the installed ``dockrq`` CLI on a test worker's queue and prefix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(dockrq, redis_url, worker, *args, **kwargs) for args, kwargs in calls]
        return [f.result() for f in futures]
