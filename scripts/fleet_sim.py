#!/usr/bin/env python3
"""How many hosts and executions per second one Redis serves: a fleet simulation (issue 14).

    .venv/bin/python scripts/fleet_sim.py                      # 24 workers, idle then busy, ~1.5 min
    .venv/bin/python scripts/fleet_sim.py --workers 8 --seconds 10 --json fleet.json

Many real ``DockrqWorker`` processes (rq workers with dockrq's heartbeat, reaper,
scheduler, channels: the code that runs in production) serve one private
``redis-server``, first idle, then under an open-loop load of ``--rate``
executions/s submitted and waited for by ``Producer`` threads. What Redis spends
is read from Redis itself: ``INFO commandstats`` (commands) and ``INFO cpu``
(the server's own CPU seconds), so the figures do not depend on how fast this
machine runs the workers.

**STAND-IN FOR DOCKER -- CAPACITY SIMULATION ONLY.** The workers here do not
run containers: their executor is ``SimulatedExecutor`` below, which "runs"
each request for ``--run-ms`` and prints ``1``..``10`` (what ``sh -c 'seq 1 10'``
prints), so that dozens of workers fit on one small machine and the Docker
daemon is not what is measured. It is defined in this script and used nowhere
else; every other test and benchmark runs real containers.

The capacity table extrapolates from the measured Redis CPU: one execution costs
``c_exec`` seconds of Redis CPU and each worker ``c_idle`` seconds per second
while idle, so one Redis core kept at ``--redis-budget`` (default 0.5: half a
core, the rest is headroom for bursts, persistence and clients) serves
``(budget - workers * c_idle) / c_exec`` executions/s. Hosts = that rate /
``--host-rate`` (one host's executions/s: BENCHMARKS.md, c=4); memory per day =
retained bytes per execution x executions/s x the retention.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cost import LISTPACK_ARGS, PrivateRedis, command_counts  # noqa: E402

from producer import Producer  # noqa: E402
from schemas import ExecutionResult, ExecutionState, ExecutionStatus  # noqa: E402

SIM_LINES = [str(i) for i in range(1, 11)]  # what `seq 1 10` prints


# -- the stand-in for Docker: THIS SIMULATION ONLY -------------------------------------------


class SimulatedExecutor:
    """STAND-IN FOR THE DOCKER EXECUTOR, for the capacity simulation only (never in the product).

    Has the executor's API (start, wait, cancel, get_log_stream, info, forget,
    is_installed): each execution writes ``1``..``10`` to stdout and succeeds
    after ``run_seconds``; cancel ends it at once (``cancelled``, exit 143).
    """

    def __init__(self, run_seconds: float) -> None:
        from worker.executor.output import OutputLog

        self._output_log = OutputLog
        self.run_seconds = run_seconds
        self._done: dict[str, Future[ExecutionResult]] = {}
        self._output: dict[str, Any] = {}
        self._lock = threading.Lock()

    def is_installed(self) -> bool:
        return True

    def answered_within(self, seconds: float) -> bool:
        return True

    def start(self, request: Any) -> None:
        from worker.executor import ExecutionAlreadyFinished, ExecutionAlreadyStarted

        eid = request.execution_id
        with self._lock:
            if eid in self._done:
                raise ExecutionAlreadyFinished(eid) if self._done[eid].done() else ExecutionAlreadyStarted(eid)
            self._done[eid], self._output[eid] = Future(), self._output_log(request.output_limit_bytes)
        self._output[eid].append("stdout", "".join(f"{line}\n" for line in SIM_LINES).encode())
        threading.Timer(self.run_seconds, self._end, args=(eid, ExecutionStatus.SUCCEEDED, 0)).start()

    def _end(self, eid: str, status: ExecutionStatus, exit_code: int) -> None:
        with self._lock:
            future, output = self._done.get(eid), self._output.get(eid)
        if future is None or future.done():
            return
        output.close()
        future.set_result(ExecutionResult(
            execution_id=eid, status=status, exit_code=exit_code, container_id="simulated",
            stdout=output.text("stdout"), stderr="",
        ))

    def wait(self, eid: str) -> Future[ExecutionResult]:
        from worker.executor import ExecutionNotFound

        mine: Future[ExecutionResult] = Future()
        with self._lock:
            future = self._done.get(eid)
        if future is None:
            mine.set_exception(ExecutionNotFound(eid))
        else:
            future.add_done_callback(lambda f: mine.set_result(f.result()))
        return mine

    def cancel(self, eid: str, grace_seconds: float | None = None) -> None:
        from worker.executor import ExecutionAlreadyFinished, ExecutionNotFound

        with self._lock:
            future = self._done.get(eid)
        if future is None:
            raise ExecutionNotFound(eid)
        if future.done():
            raise ExecutionAlreadyFinished(eid)
        self._end(eid, ExecutionStatus.CANCELLED, 143)

    def get_log_stream(self, request: Any) -> Any:
        from worker.executor import ExecutionNotFound
        from worker.executor.output import LogStream

        with self._lock:
            output = self._output.get(request.execution_id)
        if output is None:
            raise ExecutionNotFound(request.execution_id)
        return LogStream(output, tail=request.tail, follow=request.follow)

    def info(self, eid: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(execution_id=eid, state=ExecutionState.RUNNING, container_id="simulated")

    def forget(self, eid: str) -> None:
        with self._lock:
            self._done.pop(eid, None)
            self._output.pop(eid, None)

    def close(self) -> None:
        pass


def child(args: argparse.Namespace) -> None:
    """One simulated worker process: a real DockrqWorker whose executor is the stand-in."""
    from worker.rq_worker import DockrqWorker

    try:  # the layout of issue 8 (worker.service / worker.config), else the flat one before it
        from worker.config.settings import WorkerSettings
        from worker.service.runtime import WorkerRuntime, install
    except ImportError:
        from worker.runtime import WorkerRuntime, install
        from worker.settings import WorkerSettings

    settings = WorkerSettings.load(
        redis_url=args.redis_url, queues=(args.queue,), prefix=args.prefix, executor_id=args.name,
        retention_seconds=args.retention,
    )
    install(WorkerRuntime(settings, executor=SimulatedExecutor(args.run_ms / 1000)))  # type: ignore[arg-type]
    connection = redis.Redis.from_url(args.redis_url)
    DockrqWorker([args.queue], name=args.name, connection=connection).work(with_scheduler=True, logging_level="WARNING")


# -- the fleet ------------------------------------------------------------------------------


class Fleet:
    def __init__(self, url: str, queue: str, prefix: str, run_ms: float, retention: int) -> None:
        self.url, self.queue, self.prefix, self.run_ms, self.retention = url, queue, prefix, run_ms, retention
        self.procs: list[subprocess.Popen[bytes]] = []

    def grow(self, total: int) -> None:
        from rq import Queue, Worker

        for n in range(len(self.procs), total):
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--child", "--redis-url", self.url, "--queue", self.queue,
                 "--prefix", self.prefix, "--name", f"sim-{self.prefix}-{n}", "--run-ms", str(self.run_ms),
                 "--retention", str(self.retention)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            ))
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 120
        while len(Worker.all(queue=Queue(self.queue, connection=client))) < total:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("simulated workers did not start")
            time.sleep(0.2)
        client.close()

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait(5)
        self.procs.clear()


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def window(client: redis.Redis, seconds: float, during: Any = None) -> dict[str, Any]:
    """Commands, Redis CPU seconds and memory over ``seconds`` (``during`` runs meanwhile)."""
    calls0, mem0 = command_counts(client)
    cpu0, t0 = redis_cpu(client), time.monotonic()
    done = during(seconds) if during is not None else time.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu1 = redis_cpu(client)
    calls1, mem1 = command_counts(client)
    calls = calls1 - calls0
    calls["info"] -= 3  # the probe's own INFO calls
    return {"seconds": round(elapsed, 2), "commands": sum((+calls).values()), "redis_cpu_s": cpu1 - cpu0,
            "memory_delta": mem1 - mem0, "executions": done or 0}


def load(url: str, queue: str, prefix: str, rate: float, threads: int):
    """An open-loop load: ``rate`` submissions/s spread over ``threads`` Producers, each waiting
    for its outcome; returns a callable(seconds) -> executions ended (succeeded)."""

    def run(seconds: float) -> int:
        done = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def client(i: int) -> None:
            p = Producer(redis_url=url, queue=queue, prefix=prefix)
            period = threads / rate
            next_at = time.monotonic() + i * period / threads
            try:
                while True:
                    now = time.monotonic()
                    if now >= stop_at:
                        return
                    if now < next_at:
                        time.sleep(next_at - now)
                    next_at += period
                    eid = p.submit({"engine": {"image": "simulated", "cmd": ["sh", "-c", "seq 1 10"]}})
                    if p.wait(eid, timeout=60).status == ExecutionStatus.SUCCEEDED:
                        with lock:
                            done[0] += 1
            finally:
                p.close()

        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(client, i) for i in range(threads)]:
                f.result()
        return done[0]

    return run


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    token = uuid.uuid4().hex[:6]
    queue, prefix = f"sim-{token}", f"sim-{token}"
    with PrivateRedis(*(LISTPACK_ARGS if args.listpack else ())) as server:
        client = redis.Redis.from_url(server.url)
        fleet = Fleet(server.url, queue, prefix, args.run_ms, args.retention)
        try:
            fleet.grow(args.workers)
            time.sleep(3)  # start-up writes and the reapers' first passes are over
            idle = window(client, args.seconds)
            busy = window(client, args.seconds, load(server.url, queue, prefix, args.rate, args.threads))
            keys = client.dbsize()
        finally:
            fleet.stop()
            client.close()
    n = args.workers
    idle_cmd_per_worker = idle["commands"] / idle["seconds"] / n
    idle_cpu_per_worker = idle["redis_cpu_s"] / idle["seconds"] / n
    ex = max(busy["executions"], 1)
    # what the executions cost beyond the fleet's idle load over the same time
    exec_commands = (busy["commands"] - idle["commands"] / idle["seconds"] * busy["seconds"]) / ex
    exec_cpu = max(busy["redis_cpu_s"] - idle["redis_cpu_s"] / idle["seconds"] * busy["seconds"], 0.0) / ex
    bytes_per_exec = busy["memory_delta"] / ex
    result = {
        "workers": n, "rate_asked_per_s": args.rate, "run_ms": args.run_ms, "listpack": args.listpack,
        "idle": idle, "busy": busy, "keys_at_end": keys,
        "executions_per_s": round(busy["executions"] / busy["seconds"], 2),
        "idle_commands_per_worker_per_s": round(idle_cmd_per_worker, 3),
        "idle_redis_cpu_us_per_worker_per_s": round(idle_cpu_per_worker * 1e6, 1),
        "commands_per_execution": round(exec_commands, 1),
        "redis_cpu_us_per_execution": round(exec_cpu * 1e6, 1),
        "redis_busy_fraction": round(busy["redis_cpu_s"] / busy["seconds"], 4),
        "bytes_per_execution": round(bytes_per_exec),
    }
    result["capacity"] = capacity(result, args)
    return result


def capacity(r: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of the README's table: per workers-per-host, what one Redis serves."""
    rows = []
    c_exec = r["redis_cpu_us_per_execution"] / 1e6
    c_idle = r["idle_redis_cpu_us_per_worker_per_s"] / 1e6
    for hosts in args.hosts:
        workers = hosts * args.workers_per_host
        asked = hosts * args.host_rate
        cpu = workers * c_idle + asked * c_exec
        rows.append({
            "hosts": hosts, "workers": workers, "executions_per_s": round(asked, 1),
            "redis_cpu_fraction": round(cpu, 3), "fits": cpu <= args.redis_budget,
            "commands_per_s": round(workers * r["idle_commands_per_worker_per_s"] + asked * r["commands_per_execution"]),
            "memory_gb_per_day": round(r["bytes_per_execution"] * asked * 86400 / 1e9, 2),
        })
    max_rate = (args.redis_budget) / c_exec if c_exec > 0 else float("inf")
    per_host_cpu = args.workers_per_host * c_idle + args.host_rate * c_exec
    rows.append({"max_hosts_at_budget": int(args.redis_budget / per_host_cpu) if per_host_cpu > 0 else None,
                 "max_executions_per_s_at_budget": round(max_rate)})
    return rows


def render(r: dict[str, Any], args: argparse.Namespace) -> str:
    out = [
        f"fleet: {r['workers']} simulated workers (stand-in executor, {r['run_ms']:g} ms per execution), one Redis",
        f"idle: {r['idle_commands_per_worker_per_s']} commands/s and {r['idle_redis_cpu_us_per_worker_per_s']} us "
        f"Redis CPU/s per worker",
        f"busy: {r['executions_per_s']} executions/s (asked {r['rate_asked_per_s']}), "
        f"{r['commands_per_execution']} commands and {r['redis_cpu_us_per_execution']} us Redis CPU per execution, "
        f"{r['bytes_per_execution']} bytes retained per execution; Redis busy {r['redis_busy_fraction']:.1%}",
        "",
        f"| hosts ({args.workers_per_host} workers, {args.host_rate:g} executions/s each) | executions/s | "
        f"Redis commands/s | Redis CPU (cores) | fits {args.redis_budget:g} core | memory per day of retention |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["capacity"][:-1]:
        out.append(f"| {row['hosts']} | {row['executions_per_s']:g} | {row['commands_per_s']:,} | "
                   f"{row['redis_cpu_fraction']:.3f} | {'yes' if row['fits'] else 'no'} | "
                   f"{row['memory_gb_per_day']:g} GB |")
    last = r["capacity"][-1]
    out.append("")
    out.append(f"at {args.redis_budget:g} core of Redis: about {last['max_hosts_at_budget']} such hosts, "
               f"{last['max_executions_per_s_at_budget']} executions/s")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=24, help="simulated worker processes")
    p.add_argument("--rate", type=float, default=40.0, help="executions/s submitted while busy")
    p.add_argument("--threads", type=int, default=16, help="producer threads for the load")
    p.add_argument("--run-ms", type=float, default=100.0, help="how long the stand-in 'runs' each execution")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the idle and of the busy window")
    p.add_argument("--retention", type=int, default=86400)
    p.add_argument("--workers-per-host", type=int, default=4)
    p.add_argument("--host-rate", type=float, default=7.0, help="executions/s one host runs (BENCHMARKS.md, c=4)")
    p.add_argument("--hosts", type=int, nargs="*", default=[1, 10, 100, 300, 1000])
    p.add_argument("--redis-budget", type=float, default=0.5, help="Redis CPU to plan for, in cores")
    p.add_argument("--listpack", action="store_true",
                   help="run Redis with docker-compose.yml's hash-max-listpack-value 1024 (default: Redis's defaults)")
    p.add_argument("--json", metavar="FILE")
    # a simulated worker process (started by the fleet)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--queue", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    result = simulate(args)
    print(render(result, args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
