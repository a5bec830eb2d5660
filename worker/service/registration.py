"""A running worker registers itself again when Redis has lost its registration.

rq registers a worker once, at birth (``BaseWorker.register_birth``, rq 3.0): its
hash ``rq:worker:NAME`` (``birth``, ``last_heartbeat``, ``queues``, ``pid``,
``hostname``, ...; a ``DockrqWorker`` adds ``dockrq_executor`` and
``dockrq_pid_ns``) and its entries in ``rq:workers`` (what ``Worker.all``, ``rq
info``, rq-dashboard's Workers page and dockrq's listings and metrics read) and
in each of its queues' ``rq:workers:QUEUE``. After Redis lost its data (FLUSHALL,
a restart without persistence) a running worker's heartbeats and state writes
recreate the hash with only the fields they write, and the worker stays missing
from those sets until it restarts.

:class:`Registration` checks, along with the heartbeat thread's beats
(``worker.service.heartbeat``), that the worker is still in ``rq:workers`` and its
hash still has ``birth``; if not, it writes back what ``register_birth`` writes
(the same birth date; ``last_heartbeat`` now), the worker's state, and the set
entries, in one transaction, and logs one warning. It never does so once the
worker is stopping: rq's ``register_death`` (in teardown) must have the last word,
so :meth:`Registration.close` is called before it and waits for a write in flight.
Counters rq keeps in the hash (``successful_job_count``, ``failed_job_count``,
``total_working_time``) count again from what Redis still has.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from rq import worker_registration
from rq.utils import now

if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq.worker import BaseWorker

CHECK_COMMANDS = 2  # what queue_check adds to a pipeline: SISMEMBER rq:workers, HEXISTS birth


class Registration:
    """The registration check and repair of one worker (``worker``: an rq ``BaseWorker``).

    ``interval``: seconds between checks made on their own (:meth:`check_if_due`, while busy:
    the busy heartbeat is rq's ``maintain_heartbeats`` pipeline, which this cannot join)."""

    def __init__(self, worker: BaseWorker, interval: float) -> None:
        self.worker = worker
        self.interval = interval
        self._lock = threading.Lock()
        self._closed = False
        self._checked_at = time.monotonic()

    def queue_check(self, pipe: Pipeline) -> None:
        """Add the check's ``CHECK_COMMANDS`` commands to ``pipe``; hand their replies to :meth:`repair`."""
        pipe.sismember(self.worker.redis_workers_keys, self.worker.key)
        pipe.hexists(self.worker.key, "birth")

    def repair(self, replies: list[Any]) -> bool:
        """Register again if the replies of :meth:`queue_check` (the last ``CHECK_COMMANDS`` of
        ``replies``) say the registration is gone. True if it did. Raises what redis-py raises."""
        self._checked_at = time.monotonic()
        in_registry, has_birth = replies[-CHECK_COMMANDS:]
        if in_registry and has_birth:
            return False
        return self.register_again()

    def check(self) -> bool:
        """The check and repair in one round trip of their own. Raises what redis-py raises."""
        with self.worker.connection.pipeline() as pipe:
            self.queue_check(pipe)
            return self.repair(pipe.execute())

    def check_if_due(self) -> bool:
        """:meth:`check` if none ran in the last ``interval`` seconds."""
        if time.monotonic() - self._checked_at < self.interval:
            return False
        return self.check()

    def register_again(self) -> bool:
        """rq's ``register_birth`` writes (without its ``DELETE``: what was written since the loss
        stays), plus the worker's state; not once the worker is stopping. True if written."""
        worker = self.worker
        with self._lock:
            if self._closed or worker._stop_requested:
                return False
            if worker.birth_date is None:  # not born yet: register_birth is still to come
                return False
            worker.last_heartbeat = now()
            with worker.connection.pipeline() as pipe:
                pipe.hset(worker.key, mapping={**worker.serialize(), "state": worker.get_state()})
                worker_registration.register(worker, pipe)
                pipe.expire(worker.key, worker.worker_ttl + 60)
                pipe.execute()
        worker.log.warning(
            "Worker %s: its rq registration was gone from Redis (data lost: FLUSHALL or a restart "
            "without persistence?); registered again on %s",
            worker.name, ",".join(worker.queue_names()),
        )
        return True

    def close(self, timeout: float = 10) -> None:
        """No registering again from now on (the worker is stopping); waits up to ``timeout``
        seconds for one being written, so that rq's ``register_death`` comes after it."""
        acquired = self._lock.acquire(timeout=timeout)
        self._closed = True
        if acquired:
            self._lock.release()
