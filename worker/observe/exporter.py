"""Serving the Prometheus metrics: one endpoint per worker, a pool as one, queue depth from one place.

* ``dockrq-worker run --metrics-port P``: the worker's instruments (``worker.observe.metrics``)
  plus prometheus_client's ``process_*``/``python_*`` metrics on
  ``http://ADDR:P/metrics``.
* ``--pool N``: the N worker processes (rq's ``WorkerPool`` forks them) are one
  target. prometheus_client's multiprocess mode keeps each process's values in
  files of a private directory; the pool's parent serves their sum
  (``MultiProcessCollector``), so counters survive a worker that dies and is
  replaced, and ``dockrq_executions_running`` forgets a dead worker at the next
  scrape.
* Queue depth is a property of Redis, not of a worker: ``QueueCollector`` reads it
  at scrape time. It is served by ``dockrq-worker metrics`` (a small exporter, one
  per deployment) or by the one worker started with ``--queue-metrics``, never by
  every worker, so N workers do not report it N times.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq.queue import Queue

from schemas import ExecutionStatus, Keys
from schemas.connections import client_from_url

from worker.observe import metrics
from worker.config.settings import WorkerSettings
from worker.faults.liveness import process_alive

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE_RE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")
# How long a scrape waits for Redis before reporting dockrq_redis_up 0.
SCRAPE_REDIS_TIMEOUT_SECONDS = 2.0


class MetricsError(RuntimeError):
    """The metrics endpoint could not be served (port taken, address not local...): one line."""


class QueueCollector:
    """Reads each queue's jobs by rq state, and recent outcomes, from Redis at scrape time.

    Series (gauges; ``queue`` is the rq queue):

    * ``dockrq_queue_jobs{queue,state}``: ``queued`` (waiting for a worker: the queue
      depth), ``scheduled`` (``--at``/``--in``), ``deferred`` (waiting on dependencies),
      ``started`` (taken by a worker, running or settling);
    * ``dockrq_queue_outcomes{queue,status}``: executions that ended with ``status``
      within the retention (the ``P:ended:QUEUE:STATUS`` index);
    * ``dockrq_redis_up``: 1 when Redis answered this scrape, else 0 (and no other series).

    One pipelined round trip per scrape: LLEN, ZCARD x3, ZCOUNT per status, per queue.
    """

    def __init__(self, connection: redis.Redis, queues: Iterable[str], keys: Keys, retention_seconds: int) -> None:
        self.connection = connection
        self.queues = list(queues)
        self.keys = keys
        self.retention_seconds = retention_seconds

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("dockrq_redis_up", "Whether Redis answered the queue metrics' last read (1) or not (0).")
        try:
            replies = self._read()
        except redis.RedisError as exc:
            log.warning("metrics: cannot read the queues from Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily(
            "dockrq_queue_jobs", "rq jobs of a queue by state (queued is the queue depth).", labels=["queue", "state"]
        )
        ended = GaugeMetricFamily(
            "dockrq_queue_outcomes",
            "Executions of a queue that ended within the retention, by outcome status.",
            labels=["queue", "status"],
        )
        states = ("queued", "scheduled", "deferred", "started")
        statuses = [s.value for s in ExecutionStatus]
        per_queue = len(states) + len(statuses)
        for n, queue in enumerate(self.queues):
            row = replies[n * per_queue : (n + 1) * per_queue]
            for state, value in zip(states, row[: len(states)], strict=True):
                jobs.add_metric([queue, state], int(value))
            for status, value in zip(statuses, row[len(states) :], strict=True):
                ended.add_metric([queue, status], int(value))
        yield jobs
        yield ended

    def _read(self) -> list[Any]:
        since = time.time() - self.retention_seconds
        with self.connection.pipeline(transaction=False) as pipe:
            for name in self.queues:
                queue = Queue(name, connection=self.connection)
                pipe.llen(queue.key)
                pipe.zcard(queue.scheduled_job_registry.key)
                pipe.zcard(queue.deferred_job_registry.key)
                pipe.zcard(queue.started_job_registry.key)
                for status in ExecutionStatus:
                    pipe.zcount(self.keys.ended(name, status.value), since, "+inf")
            return pipe.execute()


def queue_collector(settings: WorkerSettings) -> QueueCollector:
    # One try per scrape (redis-py Retry with no retries): an unreachable Redis answers
    # dockrq_redis_up 0 within the scrape's timeout rather than after the pool's retries.
    connection = client_from_url(
        settings.redis_url, socket_timeout=SCRAPE_REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=SCRAPE_REDIS_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0),
    )
    return QueueCollector(connection, settings.queues, Keys(settings.prefix), settings.retention_seconds)


class _LiveProcessesOnly:
    """MultiProcessCollector that first forgets the ``livesum`` gauges of pool processes that died."""

    def __init__(self, path: str) -> None:
        from prometheus_client import multiprocess

        self.path = path
        self._multiprocess = multiprocess
        self._inner = multiprocess.MultiProcessCollector(None, path=path)

    def collect(self) -> Iterator[Any]:
        for name in os.listdir(self.path):
            match = _LIVE_FILE_RE.match(name)
            if match and not process_alive(int(match.group(1))):
                self._multiprocess.mark_process_dead(int(match.group(1)), self.path)
        return self._inner.collect()


class MetricsServer:
    """The HTTP endpoint (prometheus_client's ``start_http_server``); ``close()`` stops it."""

    def __init__(self, server: Any, thread: Any, multiproc_dir: str | None) -> None:
        self._server = server
        self._thread = thread
        self.multiproc_dir = multiproc_dir
        self.port: int = server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.multiproc_dir is not None and os.getpid() == _owner_pid.get(self.multiproc_dir):
            shutil.rmtree(self.multiproc_dir, ignore_errors=True)


_owner_pid: dict[str, int] = {}


def serve_worker_metrics(settings: WorkerSettings, *, pool: int = 1) -> MetricsServer | None:
    """Enable the instruments and serve them on ``settings.metrics_port`` (None: no port set).

    With ``pool > 1`` call it in the pool's parent before the workers are forked:
    it switches prometheus_client to multiprocess mode (a private temporary
    directory, removed at exit) and serves the sum of all processes.
    Raises MetricsError when the port cannot be bound.
    """
    if settings.metrics_port is None:
        return None
    multiproc_dir = None
    if pool > 1:
        multiproc_dir = tempfile.mkdtemp(prefix="dockrq-metrics-")
        _owner_pid[multiproc_dir] = os.getpid()
        atexit.register(_remove_if_owner, multiproc_dir)
        os.environ[MULTIPROC_ENV] = multiproc_dir
        if "prometheus_client" in sys.modules:  # imported before the directory was chosen
            from prometheus_client import values

            values.ValueClass = values.MultiProcessValue()
    from prometheus_client import REGISTRY, CollectorRegistry

    if multiproc_dir is None:
        metrics.enable()
        registry: Any = REGISTRY
    else:
        metrics.enable(register=False)  # values go to files; the collector below sums them
        registry = CollectorRegistry()
        registry.register(_LiveProcessesOnly(multiproc_dir))
    if settings.queue_metrics:
        registry.register(queue_collector(settings))
    return _start(settings, registry, multiproc_dir)


def serve_queue_metrics(settings: WorkerSettings) -> MetricsServer:
    """``dockrq-worker metrics``: only the queue collector (and process metrics)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(queue_collector(settings))
    return _start(settings, registry, None)


def _start(settings: WorkerSettings, registry: Any, multiproc_dir: str | None) -> MetricsServer:
    from prometheus_client import start_http_server

    port = settings.metrics_port
    assert port is not None
    try:
        server, thread = start_http_server(port, addr=settings.metrics_addr, registry=registry)
    except OSError as exc:
        raise MetricsError(
            f"metrics: cannot listen on {settings.metrics_addr}:{port} (DOCKRQ_METRICS_PORT/DOCKRQ_METRICS_ADDR): "
            f"{exc.strerror or exc}"
        ) from None
    log.info("metrics: serving http://%s:%d/metrics", settings.metrics_addr, port)
    return MetricsServer(server, thread, multiproc_dir)


def _remove_if_owner(path: str) -> None:
    if os.getpid() == _owner_pid.get(path):
        shutil.rmtree(path, ignore_errors=True)
