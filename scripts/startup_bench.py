"""CPU time (user + system) of starting ``dockrq`` commands and a ``dockrq-worker`` (BENCHMARKS.md,
"CLI and worker start-up").

Each case runs ``--runs`` times (default 5) and prints the median, min and max in ms:

- ``help``: ``dockrq --help``;
- ``status``: ``dockrq status ID`` of an id nothing knows (exit 1, one Redis round trip);
- ``submit-refused``: ``dockrq submit --memory 5zz IMAGE true`` (refused before anything is written);
- ``worker-ready``: ``dockrq-worker`` from its start until rq lists it on its queue (how
  tests/conftest.py ``spawn_worker`` detects ready); the CPU of its process tree at that moment.
  The worker is then SIGKILLed with its process group.

A command's CPU is the child's rusage (``os.wait4``). Everything runs on a private prefix and queue
(random token), which is removed at the end. Usage::

    .venv/bin/python scripts/startup_bench.py [--runs 5] [--redis-url redis://127.0.0.1:6379/12] [--case help ...]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CASES = ("help", "status", "submit-refused", "worker-ready")


def _command_cpu(args: list[str], env: dict[str, str]) -> float:
    """Seconds of user + system CPU of one run of ``args`` (its rusage as reaped)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped above
    return usage.ru_utime + usage.ru_stime


def _worker_cpu(redis_url: str, queue: str, prefix: str, env: dict[str, str]) -> float:
    """Seconds of CPU a ``dockrq-worker`` process tree used until rq lists it on ``queue``."""
    import psutil
    import redis
    from rq import Queue, Worker

    client = redis.Redis.from_url(redis_url)
    args = [str(BIN / "dockrq-worker"), "--redis-url", redis_url, "-q", queue, "--prefix", prefix,
            "--executor-id", f"startup-bench-{prefix}"]
    popen = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not Worker.all(queue=Queue(queue, connection=client)):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"dockrq-worker did not start (exit {popen.poll()})")
            time.sleep(0.01)
        root = psutil.Process(popen.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total
    finally:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)
        for worker in Worker.all(queue=Queue(queue, connection=client)):  # killed: rq's registry keeps it
            worker.register_death()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--image", default="dockrq-test/busybox:latest")
    parser.add_argument("--case", action="append", choices=CASES, help="repeatable; default all")
    opts = parser.parse_args()
    token = secrets.token_hex(4)
    prefix, queue = f"startup-bench-{token}", f"startup-bench-{token}"
    env = {**os.environ, "DOCKRQ_REDIS_URL": opts.redis_url, "DOCKRQ_PREFIX": prefix, "DOCKRQ_QUEUE": queue}
    dockrq = str(BIN / "dockrq")
    commands = {
        "help": [dockrq, "--help"],
        "status": [dockrq, "status", f"nosuch-{token}"],
        "submit-refused": [dockrq, "submit", "--memory", "5zz", opts.image, "true"],
    }
    try:
        for case in opts.case or CASES:
            if case == "worker-ready":
                samples = [_worker_cpu(opts.redis_url, queue, prefix, env) for _ in range(opts.runs)]
            else:
                samples = [_command_cpu(commands[case], env) for _ in range(opts.runs)]
            ms = sorted(s * 1000 for s in samples)
            print(f"{case:15} median {statistics.median(ms):6.0f} ms  (min {ms[0]:.0f}, max {ms[-1]:.0f}, {opts.runs} runs)")
    finally:
        import redis

        client = redis.Redis.from_url(opts.redis_url)
        for pattern in (f"{prefix}:*", f"rq:*{queue}*"):
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
        client.close()


if __name__ == "__main__":
    main()
