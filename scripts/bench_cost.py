"""What one execution costs the shared Redis and the worker (issue 14), for scripts/bench.py.

Measured against a **private** ``redis-server`` (started on a free loopback port,
no persistence, default settings otherwise), so that ``INFO commandstats`` and
``used_memory`` count dockrq alone and not whatever else uses the machine's Redis:

* ``redis_commands_per_execution``: the ``INFO commandstats`` delta over N
  sequential executions of ``sh -c 'seq 1 10'`` (one worker, one client thread:
  ``Producer.submit`` then ``Producer.wait``), divided by N. Everything is
  counted: the producer, the waiter, the worker, its heartbeat, reaper and rq's
  scheduler meanwhile, ``MULTI``/``EXEC``, and every command a Lua script runs;
* ``redis_bytes_per_execution``: the ``used_memory`` delta (less the clients' buffers,
  ``mem_clients_normal``) over those N executions,
  all retained (outcome, logs, rq job, registries), divided by N; the
  ``MEMORY USAGE`` of each key of the last execution is given beside it;
* ``idle_worker_commands_per_s``: the same worker left idle afterwards (heartbeat,
  reaper, dequeue, and rq's scheduler, which this lone worker runs);
* ``worker_cpu_ms_per_execution``: the worker process's CPU (user + system, its
  children included) over the N executions, divided by N; beside it
  ``raw_cpu_ms_per_execution``, the CPU of the bench's own thread making the raw
  docker-py calls of ``Bench.raw_one`` (create, start, wait, remove) N times, and
  ``producer_cpu_ms_per_execution``, the bench thread's CPU in submit + wait.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psutil
import redis

from producer import Producer
from schemas import ExecutionStatus

if TYPE_CHECKING:
    from bench import Bench

COST_COMMAND = ["sh", "-c", "seq 1 10"]


class PrivateRedis:
    """A ``redis-server`` of our own on a free 127.0.0.1 port, removed on exit."""

    def __init__(self, *extra_args: str) -> None:
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = ""
        self.url = ""

    def __enter__(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
        self.dir = tempfile.mkdtemp(prefix="dockrq-bench-redis-")
        for _attempt in range(5):  # another process may take the port between the probe and the bind
            port = _free_port()
            self.proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self.dir, *self.extra_args],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                if self._answers(client):
                    self.url = f"redis://127.0.0.1:{port}/0"
                    return self
            finally:
                client.close()
            self._stop()
        raise RuntimeError("could not start a private redis-server")

    def _answers(self, client: redis.Redis) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:  # ours, not a server that held the port already
                return int(client.info("server")["process_id"]) == self.proc.pid
            except redis.ConnectionError:
                time.sleep(0.05)
        return False

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_counts(client: redis.Redis) -> tuple[Counter[str], int]:
    """(calls per command, used_memory less the clients' buffers) in one INFO call (counted once).

    ``mem_clients_normal`` (query and output buffers of the connected clients: the
    waiter, the worker's blocking dequeue, pub/sub) comes and goes with traffic, not
    with what is retained; at a few KB per execution it would swamp the delta.
    """
    info = client.execute_command("INFO", "commandstats", "memory")
    calls: Counter[str] = Counter()
    for key, value in info.items():
        if key.startswith("cmdstat_"):
            calls[key.removeprefix("cmdstat_")] = int(value["calls"])
    return calls, int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))


def process_cpu_seconds(pid: int) -> float:
    """CPU (user + system) of a process and its live children (rq's scheduler)."""
    total = 0.0
    try:
        proc = psutil.Process(pid)
        for p in (proc, *proc.children(recursive=True)):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


# Redis's own setting that dockrq's docker-compose.yml sets: a hash whose values are up to
# 1 KiB stays a listpack (rq's job hash: its request, description and meta are 70-330
# bytes each, above the default 64, which makes it a hashtable twice the size).
LISTPACK_ARGS = ("--hash-max-listpack-value", "1024")


@contextmanager
def _cost_setup(bench: Bench, *server_args: str) -> Iterator[tuple[redis.Redis, Producer, subprocess.Popen[bytes]]]:
    """A private Redis (``server_args`` added), a producer and one warm dockrq-worker on it."""
    with PrivateRedis(*server_args) as server:
        client = redis.Redis.from_url(server.url)
        queue = f"{bench.queue}-cost"
        producer = Producer(redis_url=server.url, queue=queue, prefix=bench.prefix, retention_seconds=86400)
        worker = bench._spawn(queue, "cost", redis_url=server.url, retention=86400)
        bench.workers.append(worker)
        try:
            bench._wait_listening(queue, 1, [worker], connection=client)
            for _ in range(2):  # warm-up: imports, connections, the image, rq's scheduler
                _run_one(producer, _request(bench))
            time.sleep(0.5)
            yield client, producer, worker
        finally:
            bench.stop_workers_of([worker])
            producer.close()
            client.close()


def _request(bench: Bench) -> dict[str, Any]:
    return bench.request("cost", COST_COMMAND)


def measure_cost(bench: Bench, executions: int, idle_seconds: float, tick: Callable[[], None]) -> dict[str, Any]:
    """Run the cost probe on a private Redis; see the module docstring for what is measured."""
    with _cost_setup(bench) as (client, producer, worker):
        # -- N executions, one at a time --
        cpu0, before = process_cpu_seconds(worker.pid), command_counts(client)
        producer_cpu = 0.0
        last = ""
        for _ in range(executions):
            t0 = time.thread_time()
            last = _run_one(producer, _request(bench))
            producer_cpu += time.thread_time() - t0
            tick()
        after = command_counts(client)
        worker_cpu = process_cpu_seconds(worker.pid) - cpu0
        calls = after[0] - before[0]
        calls["info"] -= 1  # the probe's own INFO
        calls = +calls
        per_key = _key_sizes(client, last)

        # -- the same worker, idle --
        time.sleep(1.0)
        idle_before = command_counts(client)
        idle_t0 = time.monotonic()
        time.sleep(idle_seconds)
        idle_calls = command_counts(client)[0] - idle_before[0]
        idle_elapsed = time.monotonic() - idle_t0
        idle_calls["info"] -= 1
        idle_calls = +idle_calls

        # -- bytes again, with the hash setting of docker-compose.yml: set on the same private Redis
        # (CONFIG SET takes it for every hash written from now on, as the server argument would)
        # rather than on a second server, with a second worker to start and warm up --
        client.config_set(LISTPACK_ARGS[0].removeprefix("--"), LISTPACK_ARGS[1])
        before_lp = command_counts(client)[1]
        for _ in range(executions):
            last_lp = _run_one(producer, _request(bench))
            tick()
        bytes_lp = command_counts(client)[1] - before_lp
        per_key_lp = _key_sizes(client, last_lp)

    # -- the raw client's CPU for its create/start/wait/remove --
    raw_cpu = 0.0
    for _ in range(executions):
        t0 = time.thread_time()
        bench.raw_one(bench.docker)
        raw_cpu += time.thread_time() - t0
        tick()

    total = sum(calls.values())
    return {
        "executions": executions,
        "command": COST_COMMAND,
        "redis_commands_per_execution": round(total / executions, 2),
        "commands_by_name_per_execution": {
            name: round(n / executions, 2) for name, n in calls.most_common()
        },
        "redis_bytes_per_execution": round((after[1] - before[1]) / executions),
        "memory_usage_of_one_execution": per_key,
        "redis_bytes_per_execution_listpack": round(bytes_lp / executions),
        "listpack_server_args": list(LISTPACK_ARGS),
        "memory_usage_of_one_execution_listpack": per_key_lp,
        "idle_seconds": round(idle_elapsed, 2),
        "idle_worker_commands_per_s": round(sum(idle_calls.values()) / idle_elapsed, 3),
        "idle_commands_by_name": dict(idle_calls.most_common()),
        "worker_cpu_ms_per_execution": round(worker_cpu * 1000 / executions, 2),
        "producer_cpu_ms_per_execution": round(producer_cpu * 1000 / executions, 2),
        "raw_cpu_ms_per_execution": round(raw_cpu * 1000 / executions, 2),
    }


def _run_one(producer: Producer, request: dict[str, Any]) -> str:
    eid = producer.submit(request)
    outcome = producer.wait(eid, timeout=120)
    if outcome.status != ExecutionStatus.SUCCEEDED:
        raise RuntimeError(f"execution {eid} ended {outcome.status.value}: {outcome.error}")
    return eid


def _key_sizes(client: redis.Redis, execution_id: str) -> dict[str, Any]:
    """MEMORY USAGE (bytes, all samples) of every key named after the execution, by key with the id
    replaced by ``ID``; plus the finished registry, which holds one member per execution."""
    sizes: dict[str, Any] = {}
    time.sleep(0.5)  # the worker's rq bookkeeping (execution record removed) ends after the outcome
    for key in client.scan_iter(match=f"*{execution_id}*", count=1000):
        name = key.decode().replace(execution_id, "ID")
        size = client.memory_usage(key, samples=0)
        if size is not None:  # None: gone since the scan (a log stream compacted, the execution record removed)
            sizes[name] = {"type": client.type(key).decode(), "bytes": size}
    sizes["total_of_keys"] = sum(v["bytes"] for v in sizes.values())
    return sizes

