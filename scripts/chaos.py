#!/usr/bin/env python3
"""A bounded fault-injection session against real Redis, real workers and the real daemon.

    .venv/bin/python scripts/chaos.py --executions 200 --workers 3            # the RELIABILITY.md run
    .venv/bin/python scripts/chaos.py --executions 10 --workers 2 --no-restart-dockerd --json

What it does:

1. Starts a redis-server of its own on a spare port (append-only file in a
   temporary directory, fsync on every write, as a production Redis would be
   configured); the developer's Redis is never touched.
2. Starts ``--workers`` dockrq-worker processes, each with its own executor id,
   all on this machine's dockerd, with short heartbeat/reap settings.
3. Submits ``--executions`` short executions (sleep 0.2-3 s, a few log lines,
   half of them with ``retries: 1``). Each run appends a line to a
   per-execution file on a bind mount: the number of times it really ran.
4. While they drain: SIGKILLs a random worker every few seconds and restarts
   it in the same slot (same executor id) after a random delay, restarts Redis
   once (SIGKILL, a few seconds down, same port and data), and restarts
   dockerd once (``--restart-dockerd``, default on: it stops every container
   on the machine, so run it on a machine of your own).
5. Every execution has a waiter blocked on its outcome from the start.

It prints: submitted, outcomes (by status and error code), duplicates (ran
more often than the reaper allowed by re-enqueueing, or two containers of one
execution running at once), reruns (re-runs the request's ``retries`` allowed
after its worker was lost, the previous container stopped first), lost, hung
waiters, orphan containers, how many executions were adopted or re-enqueued,
and seconds to recover: per worker kill, until every execution the dead
worker held was adopted, re-enqueued or ended; per Redis/dockerd restart,
until an execution succeeded after it. It exits 1 if there are duplicates,
hung waiters, orphans, crashed workers, or an execution without an outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import redis  # noqa: E402
from rq import Queue, Worker  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402
from rq.utils import as_text, parse_composite_key  # noqa: E402

from producer import Producer  # noqa: E402
from schemas import Keys, Outcome  # noqa: E402
from scripts.faults import RedisServer, docker_up, ensure_dockerd, restart_dockerd  # noqa: E402

IMAGE = os.environ.get("DOCKRQ_TEST_IMAGE", "dockrq-test/busybox:latest")
WORKER_ENV = {
    "DOCKRQ_HEARTBEAT_SECONDS": "1",
    "DOCKRQ_REAP_AFTER_SECONDS": "3",
    "DOCKRQ_REAP_INTERVAL_SECONDS": "1",
    "DOCKRQ_ORPHAN_GRACE_SECONDS": "5",
}
SLEEPS = (0.2, 0.5, 1.0, 1.5, 2.0, 3.0)


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the moving parts ---------------------------------------------------------------------------------


class WorkerSlot:
    """One worker position: its executor id stays, its process is killed and restarted."""

    def __init__(self, index: int, session: Session) -> None:
        self.index = index
        self.session = session
        self.executor_id = f"chaos-{session.token}-w{index}"
        self.proc: subprocess.Popen | None = None
        self.name = ""
        self.starts = 0
        self.killed_on_purpose = False
        self.restarting = False
        self.crashes = 0
        self.refusals = 0

    def start(self) -> None:
        s = self.session
        self.name = f"{self.executor_id}.r{self.starts}"
        log = open(s.tmp / f"worker-{self.index}-r{self.starts}.log", "wb")  # noqa: SIM115 - handed to the child
        entry = Path(sys.executable).with_name("dockrq-worker")
        cmd = [str(entry)] if entry.exists() else [sys.executable, "-m", "worker.service.cli"]
        self.proc = subprocess.Popen(
            [
                *cmd, "--redis-url", s.redis_url, "-q", s.queue, "--prefix", s.prefix,
                "--executor-id", self.executor_id, "--name", self.name, "--stop-grace", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **WORKER_ENV, "DOCKRQ_ALLOWED_MOUNT_ROOTS": str(s.runs), **s.slot_env(self)},
        )
        log.close()
        self.starts += 1
        self.killed_on_purpose = False

    def was_serving(self) -> bool:
        path = self.session.tmp / f"worker-{self.index}-r{self.starts - 1}.log"
        try:
            return "Listening on" in path.read_text(errors="replace")
        except OSError:
            return False

    def log_tail(self) -> str:
        path = self.session.tmp / f"worker-{self.index}-r{self.starts - 1}.log"
        try:
            lines = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][-300:] if lines else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is None:
            return
        self.killed_on_purpose = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            return
        self.killed_on_purpose = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


# -- the session --------------------------------------------------------------------------------------


@dataclass
class Arrival:
    at: float  # wall clock when the waiter got the outcome
    outcome: Outcome


@dataclass
class Report:
    submitted: int = 0
    outcomes: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_error: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    duplicates: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    reruns: int = 0
    lost: int = 0
    hung_waiters: int = 0
    orphan_containers: int = 0
    adopted: int = 0
    requeued_by_reaper: int = 0
    worker_kills: int = 0
    worker_crashes: int = 0
    worker_start_refusals: int = 0
    redis_restarts: int = 0
    dockerd_restarts: int = 0
    recover_seconds: dict[str, float | None] = field(default_factory=dict)
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.hung_waiters or self.orphan_containers or self.missing or self.worker_crashes)


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.token = uuid.uuid4().hex[:8]
        self.queue = self.prefix = f"chaos-{self.token}"
        self.keys = Keys(self.prefix)
        self.tmp = Path(tempfile.mkdtemp(prefix="dockrq-chaos-"))
        self.runs = self.tmp / "runs"
        self.runs.mkdir()
        self.runs.chmod(0o777)
        (self.tmp / "redis").mkdir()
        self.redis = RedisServer(self.tmp / "redis")
        self.slots: list[WorkerSlot] = []
        self.ids: list[str] = []
        self.arrivals: dict[str, Arrival] = {}
        self.hung: set[str] = set()
        self.arrival_lock = threading.Lock()
        self.overlaps: set[str] = set()
        self.stop_monitor = threading.Event()
        self.recoveries: dict[str, list[float]] = {"worker_kill": [], "redis_restart": [], "dockerd_restart": []}
        self.report = Report()
        self.docker = docker.from_env()

    # -- setup ------------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def slot_env(self, slot: WorkerSlot) -> dict[str, str]:
        """Extra environment of one slot's worker (scripts/chaos_fleet.py: another node's DOCKER_HOST)."""
        return {}

    def start(self) -> None:
        self.start_backends()
        self.start_workers()
        say(f"{self.describe()}, files in {self.tmp}")

    def start_backends(self) -> None:
        """Redis (and whatever else the workers need) up, ``client`` and ``producer`` on it."""
        self.redis.start()
        self.client = redis.Redis.from_url(self.redis.url)
        self.producer = Producer(self.redis.url, queue=self.queue, prefix=self.prefix)

    def start_workers(self) -> None:
        """``args.workers`` worker slots, returning once rq lists them all on the queue."""
        for i in range(self.args.workers):
            slot = WorkerSlot(i, self)
            slot.start()
            self.slots.append(slot)
        q = Queue(self.queue, connection=self.client)
        deadline = time.monotonic() + 60
        while len(Worker.all(queue=q)) < self.args.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start; logs in {self.tmp}")
            time.sleep(0.1)

    def describe(self) -> str:
        return f"redis on :{self.redis.port}, {self.args.workers} workers on queue {self.queue}"

    def requests(self) -> list[dict[str, Any]]:
        out = []
        for i in range(self.args.executions):
            eid = f"c{i:04d}-{self.token}"
            pause = self.rng.choice(SLEEPS)
            script = 'echo run >> "/runs/$EID"; echo "start $EID"; sleep %s; echo "end $EID" >&2' % pause
            out.append({
                "execution_id": eid,
                "engine": {"image": IMAGE, "cmd": ["sh", "-c", script], "env": {"EID": eid}},
                "mounts": [{"source": str(self.runs), "target": "/runs", "read_only": False}],
                "timeout_seconds": 120,
                "retries": i % 2,
            })
        return out

    def submit(self) -> None:
        requests = self.requests()
        self.ids = [r["execution_id"] for r in requests]
        for start in range(0, len(requests), 50):
            self.producer.submit_many(requests[start : start + 50])
        for eid in self.ids:  # one waiter per execution, blocked on its outcome through every fault
            threading.Thread(target=self._wait_for, args=(eid,), daemon=True).start()
        self.report.submitted = len(self.ids)
        say(f"submitted {len(self.ids)} executions")

    def _wait_for(self, eid: str) -> None:
        try:
            outcome = self.producer.wait(eid, timeout=self.args.hang_after)
        except TimeoutError:
            with self.arrival_lock:
                self.hung.add(eid)
            return
        except Exception as exc:  # noqa: BLE001 - a waiter that fails is a hung waiter for the report
            say(f"waiter of {eid} failed: {type(exc).__name__}: {exc}")
            with self.arrival_lock:
                self.hung.add(eid)
            return
        with self.arrival_lock:
            self.arrivals[eid] = Arrival(time.time(), outcome)

    # -- observation ---------------------------------------------------------------------------------

    def monitor(self) -> None:
        """Two running containers of one execution at the same moment is a duplicate run."""
        label = f"chaos-{self.token}-"
        while not self.stop_monitor.wait(0.5):
            try:
                running = self.docker.containers.list(ignore_removed=True, filters={"label": "dockrq.execution"})
            except Exception:  # noqa: BLE001 - the daemon may be restarting
                continue
            seen = Counter(
                c.labels.get("dockrq.execution") for c in running if c.labels.get("dockrq.executor", "").startswith(label)
            )
            self.overlaps.update(eid for eid, n in seen.items() if n > 1)

    def done_count(self) -> int:
        with self.arrival_lock:
            return len(self.arrivals) + len(self.hung)

    def first_success_after(self, moment: float, timeout: float) -> float | None:
        """Seconds from ``moment`` (wall clock) until an execution succeeded after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.arrival_lock:
                later = [
                    a.at for a in self.arrivals.values()
                    if a.outcome.status.value == "succeeded" and a.outcome.result and a.outcome.result.finished_at
                    and a.outcome.result.finished_at.timestamp() > moment
                ]
            if later:
                return round(min(later) - moment, 2)
            if self.done_count() >= len(self.ids):
                return None
            time.sleep(0.2)
        return None

    def owned_by(self, worker_name: str) -> list[str]:
        registry = Queue(self.queue, connection=self.client).started_job_registry
        entries = [parse_composite_key(as_text(e)) for e in self.client.zrange(registry.key, 0, -1)]
        with self.client.pipeline(transaction=False) as pipe:
            for job_id, _ in entries:
                pipe.hget(Job.key_for(job_id), "worker_name")
            names = pipe.execute()
        return [job_id for (job_id, _), name in zip(entries, names, strict=True) if as_text(name or b"") == worker_name]

    def released(self, eid: str, dead: str) -> bool:
        """The dead worker's execution has been dealt with: ended, adopted, or back on the queue."""
        if self.client.exists(self.keys.outcome(eid)):
            return True
        status, owner = self.client.hmget(Job.key_for(eid), ["status", "worker_name"])
        return as_text(status or b"") != "started" or as_text(owner or b"") != dead

    # -- faults ---------------------------------------------------------------------------------------

    def kill_one(self) -> None:
        alive = [s for s in self.slots if s.alive()]
        if not alive:
            return
        slot = self.rng.choice(alive)
        dead = slot.name
        try:
            owned = self.owned_by(dead)
        except redis.RedisError:
            owned = []
        killed_at = time.monotonic()
        slot.kill()
        self.report.worker_kills += 1
        delay = self.rng.uniform(0.2, 2 * float(WORKER_ENV["DOCKRQ_REAP_AFTER_SECONDS"]))
        say(f"SIGKILL {dead} (running {len(owned)}); restart in {delay:.1f}s")

        def after() -> None:
            time.sleep(delay)
            self.restart(slot)
            deadline = time.monotonic() + 120
            pending = set(owned)
            while pending and time.monotonic() < deadline:
                try:
                    pending = {eid for eid in pending if not self.released(eid, dead)}
                except redis.RedisError:
                    pass
                time.sleep(0.2)
            if owned:
                self.recoveries["worker_kill"].append(round(time.monotonic() - killed_at, 2))

        threading.Thread(target=after, daemon=True).start()

    def restart(self, slot: WorkerSlot) -> None:
        """Start the slot's worker again once Redis and dockerd answer (as a process manager with backoff)."""
        slot.restarting = True
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    self.client.ping()
                    if docker_up():
                        break
                except redis.RedisError:
                    pass
                time.sleep(0.5)
            slot.start()
        finally:
            slot.restarting = False

    def restart_redis(self) -> None:
        say(f"SIGKILL redis-server; down for {self.args.redis_down:g}s")
        self.redis.kill()
        time.sleep(self.args.redis_down)
        self.redis.start()
        back = time.time()
        self.report.redis_restarts += 1
        say("redis-server is back")
        threading.Thread(
            target=lambda: self.recoveries["redis_restart"].append(self.first_success_after(back, 120)), daemon=True
        ).start()

    def restart_dockerd(self) -> None:
        say("stopping dockerd (every container on this machine stops with it)")
        away = restart_dockerd()
        back = time.time()
        self.report.dockerd_restarts += 1
        say(f"dockerd is back after {away:.1f}s")
        threading.Thread(
            target=lambda: self.recoveries["dockerd_restart"].append(self.first_success_after(back, 180)), daemon=True
        ).start()

    # -- the run ----------------------------------------------------------------------------------------

    def run(self) -> Report:
        began = time.monotonic()
        self.start()
        threading.Thread(target=self.monitor, daemon=True).start()
        self.submit()
        n = len(self.ids)
        redis_at = max(1, int(n * 0.3))
        dockerd_at = max(1, int(n * 0.55)) if self.args.restart_dockerd else None
        next_kill = time.monotonic() + self.rng.uniform(*self.args.kill_every)
        deadline = time.monotonic() + self.args.hang_after + 60
        while self.done_count() < n and time.monotonic() < deadline:
            done = self.done_count()
            if self.report.redis_restarts == 0 and done >= redis_at and self.args.restart_redis:
                self.restart_redis()
            elif dockerd_at is not None and self.report.dockerd_restarts == 0 and done >= dockerd_at:
                self.restart_dockerd()
            elif time.monotonic() >= next_kill and done < n * 0.85:
                self.kill_one()
                next_kill = time.monotonic() + self.rng.uniform(*self.args.kill_every)
            for slot in self.slots:
                if not slot.alive() and not slot.killed_on_purpose and not slot.restarting:
                    if slot.was_serving():
                        slot.crashes += 1
                        say(f"worker {slot.name} CRASHED (code {slot.proc.returncode}: {slot.log_tail()})")
                    else:  # refused to start: Redis or Docker was away (a process manager retries)
                        slot.refusals += 1
                    threading.Thread(target=self.restart, args=(slot,), daemon=True).start()
            time.sleep(0.2)
        for slot in self.slots:
            if not slot.alive() and not slot.restarting:
                self.restart(slot)
        self.settle()
        self.report.duration_seconds = round(time.monotonic() - began, 1)
        return self.report

    def settle(self) -> None:
        r = self.report
        with self.arrival_lock:
            arrivals, hung = dict(self.arrivals), set(self.hung)
        r.outcomes = len(arrivals)
        r.hung_waiters = len(hung)
        r.missing = sum(1 for eid in self.ids if not self.client.exists(self.keys.outcome(eid)))
        statuses = Counter(a.outcome.status.value for a in arrivals.values())
        r.by_status = dict(statuses)
        r.by_error = dict(Counter(a.outcome.error.code for a in arrivals.values() if a.outcome.error))
        r.lost = statuses.get("lost", 0)
        # Runs: lines each run appended; allowed: attempts the reaper granted (it stopped the previous one).
        for eid in self.ids:
            path = self.runs / eid
            runs = len(path.read_text().splitlines()) if path.exists() else 0
            job = Job.fetch(eid, connection=self.client, serializer=JSONSerializer)
            allowed = int(job.get_meta(refresh=True).get("attempts", 1))
            r.reruns += max(0, min(runs, allowed) - 1)
            if runs > allowed or eid in self.overlaps:
                r.duplicate_ids.append(eid)
        r.duplicates = len(r.duplicate_ids)
        # Orphans: containers of this session left once every outcome is in and the reapers had time.
        grace = float(WORKER_ENV["DOCKRQ_ORPHAN_GRACE_SECONDS"]) + 4 * float(WORKER_ENV["DOCKRQ_REAP_INTERVAL_SECONDS"])
        deadline = time.monotonic() + grace + 10
        while True:
            left = self.session_containers()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        r.orphan_containers = len(left)
        self.stop_monitor.set()
        logs = "".join(p.read_text(errors="replace") for p in self.tmp.glob("worker-*.log"))
        r.adopted = logs.count("adopting container")
        r.requeued_by_reaper = logs.count("lost; re-enqueued")
        r.worker_crashes = sum(s.crashes for s in self.slots)
        r.worker_start_refusals = sum(s.refusals for s in self.slots)
        r.recover_seconds = {
            "worker_kill_max": max(self.recoveries["worker_kill"], default=None),
            "redis_restart": next(iter(self.recoveries["redis_restart"]), None),
            "dockerd_restart": next(iter(self.recoveries["dockerd_restart"]), None),
        }

    def session_containers(self) -> list[Any]:
        label = f"chaos-{self.token}-"
        try:
            everything = self.docker.containers.list(ignore_removed=True, all=True, filters={"label": "dockrq.execution"})
        except Exception:  # noqa: BLE001
            return []
        return [c for c in everything if c.labels.get("dockrq.executor", "").startswith(label)]

    def close(self, keep: bool) -> None:
        self.stop_monitor.set()
        for slot in self.slots:
            slot.stop()
        try:
            self.producer.close()
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
        self.redis.kill()
        ensure_dockerd()
        for c in self.session_containers():
            c.remove(force=True)
        if keep:
            say(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--restart-dockerd", action=argparse.BooleanOptionalAction, default=True,
                        help="restart dockerd once (stops every container on the machine); default on")
    parser.add_argument("--restart-redis", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--redis-down", type=float, default=3.0, help="seconds Redis stays down")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX"),
                        help="seconds between worker SIGKILLs (random in the range)")
    parser.add_argument("--hang-after", type=float, default=600.0,
                        help="a waiter without its outcome after this many seconds is hung")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep worker logs even when all is well")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1,
                        help="2: half the workers on a second dockerd of the run's own (scripts/docker_node.py), "
                        "killed whole (workers + dockerd, SIGKILL) once and brought back (scripts/chaos_fleet.py)")
    parser.add_argument("--node-down", type=float, default=8.0, help="seconds the killed node stays down")
    parser.add_argument("--sentinel", action="store_true",
                        help="Redis as a Sentinel group (master, replica, 3 Sentinels; DOCKRQ_REPLICA_ACKS=1): "
                        "the Redis fault is a failover (master SIGKILLed, later back as a replica)")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.ERROR)  # waiters log every Redis retry at WARNING
    if not docker_up():
        print("chaos: no Docker daemon (run scripts/setup.sh)", file=sys.stderr)
        return 2
    if args.nodes > 1 or args.sentinel:
        from scripts.chaos_fleet import FleetSession

        session: Session = FleetSession(args)
    else:
        session = Session(args)
    report = None
    try:
        report = session.run()
    finally:
        session.close(keep=args.keep or report is None or not report.ok)
    figures = report.__dict__ | {"ok": report.ok}
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>20}: {value}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
