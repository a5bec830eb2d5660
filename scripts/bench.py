#!/usr/bin/env python3
"""dockrq against the raw Docker daemon, measured in one run on this machine.

    .venv/bin/python scripts/bench.py              # the full run (a few minutes)
    .venv/bin/python scripts/bench.py --quick      # under a minute, smaller samples
    .venv/bin/python scripts/bench.py --json out.json

What is measured (see BENCHMARKS.md for the method and a recorded run):

* raw: docker-py create + start + wait + remove of ``true`` at concurrency 1, 2, 4;
* dockrq: ``Producer.submit`` -> outcome seen by ``Producer.wait``, with 1, 2, 4
  real ``dockrq-worker`` processes and as many client threads (closed loop);
  raw and dockrq rounds alternate so machine noise hits both alike;
* ``Producer.submit_many`` enqueue rate (a queue no worker reads);
* outcome written (``WRITE_OUTCOME_LUA``) -> ``Producer.wait`` returns;
* log throughput: a container printing numbered lines, read raw through
  docker-py's attach stream vs followed end to end with ``Producer.logs``;
  lost and duplicated lines counted;
* peak RSS of the worker processes while a container writes 1 GiB;
* what one execution costs (issue 14, scripts/bench_cost.py, on a private
  redis-server): Redis commands and retained bytes per execution, an idle
  worker's commands per second, worker CPU per execution beside the raw client's.
* files in and out of a 16 MiB directory through dockrq against ``docker cp``
  (scripts/bench_files.py);
* an image pull: ``docker pull`` vs a pull through dockrq of a ~200 MB image from a
  loopback registry of the run's own (scripts/bench_pull.py).

Everything the run creates is namespaced by a random token (queue, key prefix,
execution ids, executor id, container labels) and removed at the end: worker
processes, containers and Redis keys.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import psutil
import redis
import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench_cost import measure_cost
from bench_pull import measure_pull
from producer import Producer
from schemas import WRITE_OUTCOME_LUA, ExecutionStatus, Outcome, parse_size

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.bench_files import FilesBench  # noqa: E402

DEFAULT_IMAGE = os.environ.get("DOCKRQ_TEST_IMAGE", "dockrq-test/busybox:latest")
DEFAULT_REDIS_URL = os.environ.get("DOCKRQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
CONCURRENCY = (1, 2, 4)
BENCH_LABEL = "dockrq.bench"
LINE_PAD = "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"
LINE_BYTES = 8 + 1 + len(LINE_PAD) + 1  # "00000001 <pad>\n"
RETENTION = 900  # seconds: anything the cleanup misses expires on its own

TARGETS = {  # key: (comparison, bound, what the issue asks)
    "throughput_ratio_c1": (">=", 0.95, "throughput >= 0.95 x raw at concurrency 1"),
    "throughput_ratio_c4": (">=", 0.95, "throughput >= 0.95 x raw at concurrency 4"),
    "overhead_p50_ms": ("<=", 30.0, "p50 overhead per execution <= 30 ms"),
    "enqueue_per_s": (">=", 5000.0, "submit_many >= 5,000 executions/s"),
    "wake_p50_ms": ("<=", 5.0, "waiter wake p50 <= 5 ms"),
    "log_follow_ratio": (">=", 0.5, "log follow >= 0.5 x raw attach rate"),
    "lost_lines": ("<=", 0, "0 lost log lines"),
    "duplicated_lines": ("<=", 0, "0 duplicated log lines"),
    "worker_peak_rss_mb": ("<=", 150.0, "worker peak RSS <= 150 MB at 1 GiB of output"),
    # issue 14: what one execution costs the shared Redis and the worker (scripts/bench_cost.py)
    "redis_commands_per_execution": ("<=", 40.0, "Redis commands per execution <= 40"),
    "redis_bytes_per_execution": ("<=", 4096.0, "Redis bytes per retained execution <= 4,096"),
    "redis_bytes_per_execution_listpack": ("<=", 4096.0, "... with compose's hash-max-listpack-value 1024"),
    "idle_worker_commands_per_s": ("<=", 2.0, "idle worker Redis commands/s <= 2"),
    "worker_cpu_ms_per_execution": ("<=", 12.0, "worker CPU per execution <= 12 ms"),
    "files_in_ratio": (">=", 0.5, "files in >= 0.5 x docker cp (16 MiB directory)"),
    "files_out_ratio": (">=", 0.5, "files out >= 0.5 x docker cp (16 MiB directory)"),
    "pull_ratio": (">=", 0.9, "image pull >= 0.9 x docker pull speed (~200 MB)"),
}
COST_KEYS = ("redis_commands_per_execution", "redis_bytes_per_execution", "redis_bytes_per_execution_listpack",
             "idle_worker_commands_per_s",
             "worker_cpu_ms_per_execution", "producer_cpu_ms_per_execution", "raw_cpu_ms_per_execution")


# -- helpers -----------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN-free for one value."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def figures(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {
        "n": len(latencies),
        "throughput_per_s": round(len(latencies) / elapsed, 3) if elapsed > 0 else 0.0,
        "p50_ms": round(pct(latencies, 50) * 1000, 2),
        "p95_ms": round(pct(latencies, 95) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
    }


def line_command(lines: int) -> list[str]:
    """A container command printing ``lines`` numbered lines (``00000001 pad``)."""
    script = f'BEGIN{{for(i=1;i<=n;i++) printf "%08d {LINE_PAD}\\n", i}}'
    return ["awk", "-v", f"n={lines}", script]


class LineCounter:
    """Counts numbered lines from chunks that may cut lines anywhere."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen = bytearray(expected + 1)
        self.total = 0
        self.duplicated = 0
        self.garbage = 0
        self._carry = ""

    def feed(self, text: str) -> None:
        text = self._carry + text
        cut = text.rfind("\n") + 1
        self._carry = text[cut:]
        for line in text[:cut].splitlines():
            self._count(line)

    def close(self) -> None:
        if self._carry:
            self._count(self._carry)
            self._carry = ""

    def _count(self, line: str) -> None:
        self.total += 1
        head = line[:8]
        if not head.isdigit() or not 1 <= int(head) <= self.expected:
            self.garbage += 1
            return
        n = int(head)
        if self.seen[n]:
            self.duplicated += 1
        self.seen[n] = 1

    @property
    def lost(self) -> int:
        return self.expected - sum(self.seen)


# -- the things measured ----------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.token = uuid.uuid4().hex[:8]
        self.queue = f"bench-{self.token}"
        self.prefix = f"bench-{self.token}"
        self.executor_id = f"bench-{self.token}"
        self.redis = redis.Redis.from_url(args.redis_url)
        self.docker = docker.APIClient(version="auto")
        self.producer = Producer(
            redis_url=args.redis_url, queue=self.queue, prefix=self.prefix, retention_seconds=RETENTION
        )
        self.workers: list[subprocess.Popen[bytes]] = []  # every worker started (stopped at cleanup)
        self.pool: list[subprocess.Popen[bytes]] = []  # those on the bench queue (the concurrency figures)
        self._raw_clients: list[docker.APIClient] = []
        self.log_dir = Path(args.log_dir) if args.log_dir else None
        self._seq = 0
        self._seq_lock = threading.Lock()

    # -- ids and requests --

    def new_id(self, kind: str) -> str:
        with self._seq_lock:
            self._seq += 1
            return f"{kind}-{self.token}-{self._seq}"

    def request(self, kind: str, cmd: list[str], **fields: Any) -> dict[str, Any]:
        return {"execution_id": self.new_id(kind), "engine": {"image": self.args.image, "cmd": cmd}, **fields}

    # -- raw Docker ------------------------------------------------------------

    def raw_one(self, api: docker.APIClient) -> float:
        """create, start, wait, remove of ``true``: seconds taken."""
        t0 = time.perf_counter()
        host_config = api.create_host_config(network_mode="none")
        cid = api.create_container(
            self.args.image, command=["true"], host_config=host_config, labels={BENCH_LABEL: self.token}
        )["Id"]
        api.start(cid)
        api.wait(cid)
        api.remove_container(cid, force=True)
        return time.perf_counter() - t0

    def run_raw(self, concurrency: int, count: int, tick: Callable[[], None]) -> tuple[list[float], float]:
        while len(self._raw_clients) < concurrency:  # one client per thread, kept across rounds
            self._raw_clients.append(docker.APIClient(version="auto"))
        return self._closed_loop(concurrency, count, lambda i: self.raw_one(self._raw_clients[i]), tick)

    # -- dockrq end to end -----------------------------------------------------

    def dockrq_one(self) -> float:
        t0 = time.perf_counter()
        eid = self.producer.submit(self.request("e2e", ["true"]))
        outcome = self.producer.wait(eid, timeout=120)
        elapsed = time.perf_counter() - t0
        if outcome.status != ExecutionStatus.SUCCEEDED:
            raise RuntimeError(f"execution {eid} ended {outcome.status.value}: {outcome.error}")
        return elapsed

    def run_dockrq(self, concurrency: int, count: int, tick: Callable[[], None]) -> tuple[list[float], float]:
        return self._closed_loop(concurrency, count, lambda _i: self.dockrq_one(), tick)

    @staticmethod
    def _closed_loop(
        concurrency: int, count: int, one: Callable[[int], float], tick: Callable[[], None]
    ) -> tuple[list[float], float]:
        """``concurrency`` threads, each running ``one`` back to back until ``count`` are done."""
        latencies: list[float] = []
        lock = threading.Lock()
        remaining = [count]

        def loop(i: int) -> None:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                latency = one(i)
                with lock:
                    latencies.append(latency)
                tick()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(loop, i) for i in range(concurrency)]:
                f.result()
        return latencies, time.perf_counter() - t0

    # -- workers ---------------------------------------------------------------

    def spawn_workers(self, total: int) -> None:
        """Start dockrq-worker processes on the bench queue up to ``total`` (not waiting for them)."""
        for n in range(len(self.pool), total):
            self.pool.append(self._spawn(self.queue, f"w{n}"))
            self.workers.append(self.pool[-1])

    def start_workers(self, total: int) -> None:
        """Grow the pool on the bench queue to ``total`` dockrq-worker processes, listening."""
        self.spawn_workers(total)
        self._wait_listening(self.queue, total, self.pool)

    def _spawn(self, queue: str, name: str, *, redis_url: str | None = None,
               retention: int = RETENTION) -> subprocess.Popen[bytes]:
        entry = Path(sys.executable).with_name("dockrq-worker")
        base = [str(entry)] if entry.exists() else [sys.executable, "-m", "worker.service.cli"]
        # the log test keeps every line in the result: allow its output_limit_bytes
        env = {**os.environ, "DOCKRQ_RETENTION_SECONDS": str(retention), "DOCKRQ_MAX_OUTPUT_BYTES": "1g",
               # the files figures may move more than the default 16 MiB (--files-mib)
               "DOCKRQ_MAX_INPUT_BYTES": "1g", "DOCKRQ_MAX_OUTPUT_FILES_BYTES": "1g"}
        args = [
            *base, "--redis-url", redis_url or self.args.redis_url, "-q", queue, "--prefix", self.prefix,
            "--executor-id", self.executor_id, "--stop-grace", "1", "--log-level", "WARNING",
            "--name", f"{self.executor_id}-{name}",
        ]
        out = open(self.log_dir / f"worker-{name}.log", "wb") if self.log_dir else subprocess.DEVNULL
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)

    def _wait_listening(self, queue: str, total: int, started: list[subprocess.Popen[bytes]],
                        connection: redis.Redis | None = None) -> None:
        from rq import Queue, Worker

        deadline = time.monotonic() + 60
        q = Queue(queue, connection=connection or self.redis)
        while len(Worker.all(queue=q)) < total:
            dead = [p for p in started if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"dockrq-worker did not start (exit codes {[p.returncode for p in dead]})")
            time.sleep(0.05)

    def stop_workers(self) -> None:
        self.stop_workers_of(list(self.workers))

    def stop_workers_of(self, workers: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM each worker's process group, then SIGKILL what is left after 5 s."""
        for p in workers:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in workers:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the process group: the worker and rq's scheduler process
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait(5)
            if p in self.workers:
                self.workers.remove(p)
            if p in self.pool:
                self.pool.remove(p)

    # -- submit_many -------------------------------------------------------------

    def run_enqueue(self, total: int, batch: int, tick: Callable[[int], None]) -> dict[str, Any]:
        """Enqueue ``total`` requests with submit_many in batches, on a queue no worker reads."""
        queue = f"{self.queue}-enqueue"
        requests = [self.request("enq", ["true"]) for _ in range(total)]
        # One warm-up batch (connections, imports, rq's queue object), not counted.
        self.producer.submit_many([self.request("enqwarm", ["true"]) for _ in range(min(batch, 100))], queue=queue)
        elapsed = 0.0
        for start in range(0, total, batch):
            chunk = requests[start : start + batch]
            t0 = time.perf_counter()
            self.producer.submit_many(chunk, queue=queue)
            elapsed += time.perf_counter() - t0
            tick(len(chunk))
        queued = self.redis.llen(f"rq:queue:{queue}")
        return {"enqueued": total, "batch": batch, "seconds": round(elapsed, 4),
                "enqueue_per_s": round(total / elapsed, 1), "queue_length": queued}

    # -- wake latency ----------------------------------------------------------------

    def run_wake(self, samples: int, tick: Callable[[], None]) -> dict[str, Any]:
        """A thread blocks in Producer.wait; the outcome is written with WRITE_OUTCOME_LUA,
        stamped with time.time() just before the write (in its error message): the waiter's
        clock when wait() returns, minus the stamp it finds in the outcome."""
        write = self.redis.register_script(WRITE_OUTCOME_LUA)
        keys = self.producer.keys
        wakes: list[float] = []
        straddle_every = 0 if self.args.quick else 20  # some writes land on a slice boundary (1 s)
        for i in range(samples):
            eid = self.new_id("wake")
            self.redis.set(keys.claim(eid), self.queue, ex=RETENTION)  # a known id: wait() blocks on it
            got: list[float] = []
            errors: list[BaseException] = []

            def waiter(eid: str = eid) -> None:
                try:
                    outcome = self.producer.wait(eid, timeout=30)
                    woke = time.time()
                    got.append(woke - float(outcome.error.message))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            thread = threading.Thread(target=waiter, daemon=True)
            thread.start()
            if straddle_every and i % straddle_every == straddle_every - 1:
                time.sleep(random.uniform(0.98, 1.02))
            else:
                time.sleep(random.uniform(0.01, 0.04))
            stamped = Outcome.failure(eid, ExecutionStatus.CANCELLED, "bench", repr(time.time()))
            write(keys=[keys.outcome(eid)], args=[stamped.model_dump_json(), RETENTION])
            thread.join(35)
            if errors or not got:
                raise RuntimeError(f"wake probe {eid} failed: {errors}")
            wakes.append(got[0])
            tick()
        return {
            "samples": len(wakes),
            "wake_p50_ms": round(pct(wakes, 50) * 1000, 3),
            "wake_p95_ms": round(pct(wakes, 95) * 1000, 3),
            "wake_max_ms": round(max(wakes) * 1000, 3),
        }

    # -- logs ------------------------------------------------------------------------

    def raw_logs(self, lines: int) -> dict[str, Any]:
        """create, attach (stream), start, read to the end: the daemon's own rate."""
        counter = LineCounter(lines)
        api = self.docker
        t0 = time.perf_counter()
        cid = api.create_container(
            self.args.image, command=line_command(lines),
            host_config=api.create_host_config(network_mode="none"), labels={BENCH_LABEL: self.token},
        )["Id"]
        try:
            stream = api.attach(cid, stdout=True, stderr=True, stream=True, logs=False)
            api.start(cid)
            for chunk in stream:
                counter.feed(chunk.decode("utf-8", errors="replace"))
            counter.close()
            elapsed = time.perf_counter() - t0
            api.wait(cid)
        finally:
            api.remove_container(cid, force=True)
        return self._log_figures(counter, elapsed)

    def dockrq_logs(self, lines: int) -> dict[str, Any]:
        """submit, then Producer.logs(follow) from the first entry to eof."""
        counter = LineCounter(lines)
        # every line kept in the result (the per-stream cap defaults to 1 MiB)
        request = self.request("logs", line_command(lines), output_limit_bytes=lines * LINE_BYTES + (1 << 16))
        t0 = time.perf_counter()
        eid = self.producer.submit(request)
        for entry in self.producer.logs(eid, tail=True, follow=True):
            counter.feed(entry.data)
        counter.close()
        elapsed = time.perf_counter() - t0
        outcome = self.producer.wait(eid, timeout=120)
        if outcome.status != ExecutionStatus.SUCCEEDED:
            raise RuntimeError(f"log execution ended {outcome.status.value}: {outcome.error}")
        return self._log_figures(counter, elapsed)

    @staticmethod
    def _log_figures(counter: LineCounter, elapsed: float) -> dict[str, Any]:
        return {
            "lines": counter.expected,
            "seconds": round(elapsed, 4),
            "lines_per_s": round(counter.expected / elapsed, 1),
            "mb_per_s": round(counter.expected * LINE_BYTES / elapsed / 1e6, 2),
            "lost_lines": counter.lost,
            "duplicated_lines": counter.duplicated,
            "garbage_lines": counter.garbage,
        }

    # -- worker memory -----------------------------------------------------------------

    def run_rss(self, size: int) -> dict[str, Any]:
        """Peak RSS of a worker of its own (fresh, warmed by one execution), sampled every
        20 ms, while its one container writes ``size`` bytes (default per-stream cap)."""
        queue = f"{self.queue}-rss"
        worker = self._spawn(queue, "rss")
        self.workers.append(worker)
        self._wait_listening(queue, 1, [worker])
        warm = self.producer.submit(self.request("rsswarm", ["true"]), queue=queue)
        self.producer.wait(warm, timeout=120)
        proc = psutil.Process(worker.pid)
        baseline = proc.memory_info().rss
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], proc.memory_info().rss)
                except psutil.Error:
                    pass
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        try:
            eid = self.producer.submit(self.request("rss", ["head", "-c", str(size), "/dev/zero"]), queue=queue)
            outcome = self.producer.wait(eid, timeout=600)
        finally:
            stop.set()
            sampler.join()
        elapsed = time.perf_counter() - t0
        if outcome.status != ExecutionStatus.SUCCEEDED:
            raise RuntimeError(f"RSS execution ended {outcome.status.value}: {outcome.error}")
        return {
            "output_bytes": size,
            "seconds": round(elapsed, 3),
            "worker_baseline_rss_mb": round(baseline / 1e6, 1),
            "worker_peak_rss_mb": round(peak[0] / 1e6, 1),
            "stdout_truncated": bool(outcome.result and outcome.result.stdout_truncated),
        }

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self) -> dict[str, int]:
        """Workers, then containers, then Redis keys; each part runs whatever the others did,
        and the Docker and Redis parts retry for a while (a daemon restarting, say)."""
        report = {"containers_removed": 0, "redis_keys_removed": 0}
        try:
            self.stop_workers()
        finally:
            try:
                report["containers_removed"] = _retrying(self._remove_containers)
            except Exception as exc:  # noqa: BLE001 - say so, and still clean Redis
                self.console.print(f"[red]bench: containers not removed ({exc}); label {BENCH_LABEL}={self.token}, "
                                   f"dockrq.executor={self.executor_id}")
            try:
                report["redis_keys_removed"] = _retrying(self._remove_keys)
            except Exception as exc:  # noqa: BLE001
                self.console.print(f"[red]bench: Redis keys *{self.token}* not removed ({exc})")
            for client in (self.producer, *self._raw_clients, self.docker, self.redis):
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        return report

    def _remove_containers(self) -> int:
        removed = 0
        for label in (f"{BENCH_LABEL}={self.token}", f"dockrq.executor={self.executor_id}"):
            for c in self.docker.containers(all=True, filters={"label": label}):
                try:
                    self.docker.remove_container(c["Id"], force=True)
                    removed += 1
                except docker.errors.NotFound:
                    pass
        return removed

    def _remove_keys(self) -> int:
        keys = 0
        batch: list[bytes] = []
        for key in self.redis.scan_iter(match=f"*{self.token}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                keys += self.redis.delete(*batch)
                batch.clear()
        if batch:
            keys += self.redis.delete(*batch)
        # rq's global sets name our queues and workers
        for set_key in ("rq:queues", "rq:workers"):
            members = [m for m in self.redis.smembers(set_key) if self.token.encode() in m]
            if members:
                self.redis.srem(set_key, *members)
        return keys


def _retrying(fn: Callable[[], int], seconds: float = 60.0) -> int:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (docker.errors.DockerException, requests.exceptions.RequestException, redis.RedisError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    bench = Bench(args, console)
    raw: dict[int, tuple[list[float], float]] = {c: ([], 0.0) for c in CONCURRENCY}
    ours: dict[int, tuple[list[float], float]] = {c: ([], 0.0) for c in CONCURRENCY}
    rounds_of: dict[int, list[dict[str, Any]]] = {c: [] for c in CONCURRENCY}
    result: dict[str, Any] = {}
    progress = Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=False,
    )
    started = time.time()
    load_before = os.getloadavg()
    try:
        with progress:
            # the first worker of the pool starts meanwhile (on the shared Redis: nothing the cost counts)
            bench.spawn_workers(1)
            # -- cost per execution on a private Redis (first: the machine is quietest) --
            task = progress.add_task("cost: Redis commands, bytes, CPU", total=3 * args.cost_executions)
            cost = measure_cost(bench, args.cost_executions, args.idle_seconds, lambda: progress.advance(task))

            # -- throughput and latency: raw vs dockrq, alternating rounds --
            for c in CONCURRENCY:
                task = progress.add_task(f"workers: starting {c}", total=None)
                bench.start_workers(c)
                progress.update(task, description=f"c={c}: warm-up", total=2 * c)
                # warm both paths (first container, connection pools, worker imports)
                bench.run_raw(c, c, lambda: progress.advance(task))
                bench.run_dockrq(c, c, lambda: progress.advance(task))
                rounds, per_round = plan_rounds(args.samples, c, args.rounds)
                progress.update(task, description=f"c={c}: raw vs dockrq", total=2 * per_round * rounds, completed=0)
                for _ in range(rounds):  # short alternating rounds: noise on the machine hits both alike
                    pair = {}
                    for name, target, fn in (("raw", raw, bench.run_raw), ("dockrq", ours, bench.run_dockrq)):
                        lat, elapsed = fn(c, per_round, lambda: progress.advance(task))
                        target[c] = (target[c][0] + lat, target[c][1] + elapsed)
                        pair[name] = {"p50_ms": round(pct(lat, 50) * 1000, 2), "per_s": round(len(lat) / elapsed, 3),
                                      "latencies_ms": [round(x * 1000, 1) for x in lat]}
                    rounds_of[c].append(pair)
                progress.update(task, description=f"c={c}: raw vs dockrq done")

            # -- log throughput (workers: 4 now running) --
            task = progress.add_task("logs: raw attach vs dockrq follow", total=2 * args.log_rounds)
            log_raw, log_ours = [], []
            for _ in range(args.log_rounds):
                log_raw.append(bench.raw_logs(args.log_lines))
                progress.advance(task)
                log_ours.append(bench.dockrq_logs(args.log_lines))
                progress.advance(task)

            # -- worker memory at a flood of output --
            task = progress.add_task(f"rss: container writes {args.rss_bytes >> 20} MiB", total=1)
            rss = bench.run_rss(args.rss_bytes)
            progress.advance(task)

            # -- files in and out: dockrq vs docker cp (workers: 4 running) --
            task = progress.add_task(f"files: {args.files_mib} MiB vs docker cp", total=4 * args.files_rounds)
            files_bench = FilesBench(bench, args.files_mib)
            try:
                files = files_bench.run(args.files_rounds, lambda: progress.advance(task))
            finally:
                files_bench.close()

            # -- enqueue rate --
            task = progress.add_task("submit_many", total=args.enqueue)
            enqueue = bench.run_enqueue(args.enqueue, args.enqueue_batch, lambda n: progress.advance(task, n))

            # -- wake latency --
            task = progress.add_task("wake: outcome -> waiter", total=args.wake_samples)
            wake = bench.run_wake(args.wake_samples, lambda: progress.advance(task))

            # -- image pull: docker pull vs dockrq --
            task = progress.add_task(f"pull: {args.pull_mb} MB, docker vs dockrq", total=2 * args.pull_rounds)
            pull = measure_pull(bench, args.pull_mb, args.pull_rounds, lambda: progress.advance(task))
    finally:
        cleaned = bench.cleanup()

    per_c: dict[str, Any] = {}
    for c in CONCURRENCY:
        r, o = figures(*raw[c]), figures(*ours[c])
        ratio = o["throughput_per_s"] / r["throughput_per_s"] if r["throughput_per_s"] else float("nan")
        paired = [x["dockrq"]["p50_ms"] - x["raw"]["p50_ms"] for x in rounds_of[c]]
        per_c[str(c)] = {"raw": r, "dockrq": o, "throughput_ratio": round(ratio, 3),
                         "overhead_p50_ms": round(o["p50_ms"] - r["p50_ms"], 2),
                         "overhead_p95_ms": round(o["p95_ms"] - r["p95_ms"], 2),
                         # median over rounds of (dockrq round p50 - raw round p50): less exposed to drifting noise
                         "overhead_p50_paired_ms": round(statistics.median(paired), 2),
                         "rounds": rounds_of[c]}
        result[f"raw_c{c}_per_s"] = r["throughput_per_s"]
        result[f"dockrq_c{c}_per_s"] = o["throughput_per_s"]
        result[f"raw_c{c}_p50_ms"], result[f"raw_c{c}_p95_ms"] = r["p50_ms"], r["p95_ms"]
        result[f"dockrq_c{c}_p50_ms"], result[f"dockrq_c{c}_p95_ms"] = o["p50_ms"], o["p95_ms"]
        result[f"throughput_ratio_c{c}"] = round(ratio, 3)
    result["overhead_p50_ms"] = per_c["1"]["overhead_p50_ms"]
    result["overhead_p95_ms"] = per_c["1"]["overhead_p95_ms"]
    result["overhead_p50_paired_ms"] = per_c["1"]["overhead_p50_paired_ms"]
    result["enqueue_per_s"] = enqueue["enqueue_per_s"]
    result["wake_p50_ms"] = wake["wake_p50_ms"]
    result["wake_p95_ms"] = wake["wake_p95_ms"]
    raw_rate = statistics.median(x["lines_per_s"] for x in log_raw)
    our_rate = statistics.median(x["lines_per_s"] for x in log_ours)
    result["log_raw_lines_per_s"] = raw_rate
    result["log_follow_lines_per_s"] = our_rate
    result["log_follow_ratio"] = round(our_rate / raw_rate, 3)
    result["lost_lines"] = sum(x["lost_lines"] for x in log_ours)
    result["duplicated_lines"] = sum(x["duplicated_lines"] for x in log_ours)
    result["raw_lost_lines"] = sum(x["lost_lines"] for x in log_raw)
    result["worker_peak_rss_mb"] = rss["worker_peak_rss_mb"]
    result["worker_baseline_rss_mb"] = rss["worker_baseline_rss_mb"]
    for key in COST_KEYS:
        result[key] = cost[key]
    result.update({k: v for k, v in files.items() if k != "seconds"})
    result["pull_ratio"] = pull["pull_ratio"]
    result["targets"] = {
        key: {"target": f"{op} {bound:g}", "value": result[key], "met": _met(result[key], op, bound), "goal": goal}
        for key, (op, bound, goal) in TARGETS.items()
    }
    result["details"] = {
        "concurrency": per_c, "logs": {"raw": log_raw, "dockrq": log_ours}, "rss": rss,
        "enqueue": enqueue, "wake": wake, "cost": cost, "files": files, "pull": pull, "cleanup": cleaned,
    }
    result["run"] = {
        "token": bench.token, "quick": args.quick, "samples_per_concurrency": {c: len(raw[c][0]) for c in CONCURRENCY},
        "rounds": {c: len(rounds_of[c]) for c in CONCURRENCY},
        "log_lines": args.log_lines, "rss_bytes": args.rss_bytes, "enqueue": args.enqueue,
        "wake_samples": args.wake_samples, "cost_executions": args.cost_executions, "idle_seconds": args.idle_seconds,
        "files_mib": args.files_mib, "files_rounds": args.files_rounds,
        "image": args.image, "seconds": round(time.time() - started, 1),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": _machine(),
        # other work on the machine skews every figure: the 1-minute load average around the run
        "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    return result


def plan_rounds(samples: int, concurrency: int, rounds: int | None) -> tuple[int, int]:
    """(rounds, executions per round) for one concurrency level: by default rounds of
    four executions per client thread, so raw and dockrq alternate every second or so."""
    if rounds is None:
        rounds = max(1, samples // (4 * concurrency))
    rounds = max(1, min(rounds, samples))
    return rounds, max(1, samples // rounds)


def _met(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    try:
        api = docker.APIClient(version="auto")
        info["docker"] = api.version().get("Version")
        api.close()
    except Exception:  # noqa: BLE001 - informational
        pass
    try:
        client = redis.Redis.from_url(DEFAULT_REDIS_URL)
        info["redis"] = client.info("server").get("redis_version")
        client.close()
    except Exception:  # noqa: BLE001 - informational
        pass
    return info


def render(result: dict[str, Any], console: Console) -> None:
    per_c = result["details"]["concurrency"]
    table = Table(title="raw Docker vs dockrq (submit -> outcome seen by a waiter)")
    for col in ("concurrency", "raw /s", "raw p50 ms", "raw p95 ms", "dockrq /s", "dockrq p50 ms",
                "dockrq p95 ms", "ratio", "overhead p50 ms", "paired"):
        table.add_column(col, justify="right")
    for c, row in per_c.items():
        r, o = row["raw"], row["dockrq"]
        table.add_row(c, f"{r['throughput_per_s']:.2f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
                      f"{o['throughput_per_s']:.2f}", f"{o['p50_ms']:.1f}", f"{o['p95_ms']:.1f}",
                      f"{row['throughput_ratio']:.3f}", f"{row['overhead_p50_ms']:.1f}",
                      f"{row['overhead_p50_paired_ms']:.1f}")
    console.print(table)
    console.print("paired: median over the alternating rounds of (dockrq p50 - raw p50)", style="dim")

    d = result["details"]
    other = Table(title="other figures")
    other.add_column("measure")
    other.add_column("value", justify="right")
    other.add_row("submit_many enqueue rate", f"{d['enqueue']['enqueue_per_s']:,.0f} /s "
                  f"({d['enqueue']['enqueued']} in batches of {d['enqueue']['batch']})")
    other.add_row("wake p50 / p95 / max", f"{d['wake']['wake_p50_ms']:.2f} / {d['wake']['wake_p95_ms']:.2f} / "
                  f"{d['wake']['wake_max_ms']:.2f} ms")
    other.add_row("log lines per run", f"{result['run']['log_lines']:,}")
    other.add_row("log raw attach rate", f"{result['log_raw_lines_per_s']:,.0f} lines/s")
    other.add_row("log dockrq follow rate", f"{result['log_follow_lines_per_s']:,.0f} lines/s")
    other.add_row("log lost / duplicated", f"{result['lost_lines']} / {result['duplicated_lines']}")
    other.add_row("worker RSS baseline / peak",
                  f"{d['rss']['worker_baseline_rss_mb']:.1f} / {d['rss']['worker_peak_rss_mb']:.1f} MB "
                  f"({d['rss']['output_bytes'] >> 20} MiB written)")
    c = d["cost"]
    other.add_row("Redis per execution", f"{c['redis_commands_per_execution']:.1f} commands, "
                  f"{c['redis_bytes_per_execution']:,} bytes retained ({c['executions']} x {' '.join(c['command'])}); "
                  f"{c['redis_bytes_per_execution_listpack']:,} with hash-max-listpack-value 1024")
    other.add_row("idle worker", f"{c['idle_worker_commands_per_s']:.2f} Redis commands/s")
    other.add_row("CPU per execution", f"worker {c['worker_cpu_ms_per_execution']:.1f} ms, producer "
                  f"{c['producer_cpu_ms_per_execution']:.1f} ms, raw docker-py {c['raw_cpu_ms_per_execution']:.1f} ms")
    other.add_row(f"files in: dockrq / docker cp ({result['files_mib']} MiB)",
                  f"{result['files_in_mb_per_s']:.1f} / {result['docker_cp_in_mb_per_s']:.1f} MB/s")
    other.add_row(f"files out: dockrq / docker cp ({result['files_mib']} MiB)",
                  f"{result['files_out_mb_per_s']:.1f} / {result['docker_cp_out_mb_per_s']:.1f} MB/s")
    run = result["run"]
    other.add_row("machine", f"{run['machine'].get('cpus')} CPUs, docker {run['machine'].get('docker')}, "
                  f"redis {run['machine'].get('redis')}; load {run['loadavg_1m'][0]} -> {run['loadavg_1m'][1]}")
    console.print(other)

    targets = Table(title="targets (issues 5 and 14)")
    for col, justify in (("goal", "left"), ("value", "right"), ("target", "right"), ("met", "center")):
        targets.add_column(col, justify=justify)
    for t in result["targets"].values():
        value = t["value"]
        targets.add_row(t["goal"], f"{value:,.3f}" if isinstance(value, float) else str(value), t["target"],
                        "[green]yes[/]" if t["met"] else "[red]no[/]")
    console.print(targets)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller samples: a run under a minute")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE ('-' for stdout)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"Redis for the run (default {DEFAULT_REDIS_URL})")
    p.add_argument("--image", default=DEFAULT_IMAGE)
    p.add_argument("--samples", type=int, help="executions per concurrency level, raw and dockrq each")
    p.add_argument("--rounds", type=int, help="alternating raw/dockrq rounds per concurrency level "
                   "(default: rounds of 4 executions per client thread)")
    p.add_argument("--log-lines", type=int, help="lines printed by the log container")
    p.add_argument("--log-rounds", type=int, help="log runs (raw and dockrq each); the median rate counts")
    p.add_argument("--rss-bytes", type=parse_size, help="bytes written by the RSS container (default 1g; --quick 64m)")
    p.add_argument("--enqueue", type=int, help="executions enqueued with submit_many")
    p.add_argument("--enqueue-batch", type=int, help="requests per submit_many call")
    p.add_argument("--wake-samples", type=int)
    p.add_argument("--cost-executions", type=int, help="executions of the cost probe (private Redis)")
    p.add_argument("--idle-seconds", type=float, help="how long the cost probe watches an idle worker")
    p.add_argument("--files-mib", type=int, help="size of the files directory, in 1 MiB files (default 16)")
    p.add_argument("--files-rounds", type=int, help="alternating rounds of the four files measures")
    p.add_argument("--pull-mb", type=int, help="size of the pulled image in MB (default 200; --quick 20)")
    p.add_argument("--pull-rounds", type=int, help="docker pull / dockrq pull pairs (median counts)")
    p.add_argument("--log-dir", help="keep the workers' output here")
    args = p.parse_args(argv)
    defaults = {
        # full run / quick run
        "samples": (60, 8), "log_lines": (200_000, 20_000), "log_rounds": (3, 1),
        "rss_bytes": (1 << 30, 64 << 20), "enqueue": (20_000, 2_000), "enqueue_batch": (1_000, 1_000),
        "wake_samples": (200, 30), "cost_executions": (300, 20), "idle_seconds": (60.0, 12.0),
        "files_mib": (16, 16), "files_rounds": (5, 2), "pull_mb": (200, 20), "pull_rounds": (3, 1),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    # tables keep their columns when piped (the README and BENCHMARKS.md paste them)
    out = Console() if sys.stdout.isatty() else Console(width=150)
    result = run(args, console)
    render(result, out)
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
