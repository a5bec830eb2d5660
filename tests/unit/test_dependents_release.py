"""The reaper's release of a deferred dependent (worker/faults/dependents.py) and rq's own
release in the dependency's success transaction never both enqueue it (fakeredis).

A full run once failed this way: the dependency's outcome is written before rq's success
transaction; the sweep released the dependent in between, then rq's
``Queue.enqueue_dependents`` (which does not look at the dependent's status) enqueued it a
second time, two workers took it, and the second one's container-name conflict ended it
``error``.
"""

from __future__ import annotations

from types import SimpleNamespace

import fakeredis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from worker.faults.dependents import DeferredDependentsSweep


def test_a_dependent_the_sweep_released_is_not_enqueued_again_by_rq():
    conn = fakeredis.FakeRedis()
    queue = Queue("q", connection=conn, serializer=JSONSerializer)
    first = queue.enqueue("os.getcwd", job_id="first")
    then = queue.enqueue("os.getcwd", job_id="then", depends_on=first)
    assert then.get_status() == JobStatus.DEFERRED and conn.lrange(queue.key, 0, -1) == [b"first"]
    conn.lpop(queue.key)  # a worker took the dependency; its outcome says succeeded...

    DeferredDependentsSweep(SimpleNamespace(connection=conn))._release(queue, then)  # ...the sweep releases
    assert conn.lrange(queue.key, 0, -1) == [b"then"]

    first.set_status(JobStatus.FINISHED)  # ...then rq's success transaction for the dependency
    queue.enqueue_dependents(first)
    assert conn.lrange(queue.key, 0, -1) == [b"then"], "enqueued twice: it would run twice"


def test_rq_releases_a_dependent_the_sweep_did_not():
    conn = fakeredis.FakeRedis()
    queue = Queue("q", connection=conn, serializer=JSONSerializer)
    first = queue.enqueue("os.getcwd", job_id="first")
    queue.enqueue("os.getcwd", job_id="then", depends_on=first)
    conn.lpop(queue.key)
    first.set_status(JobStatus.FINISHED)
    queue.enqueue_dependents(first)
    assert conn.lrange(queue.key, 0, -1) == [b"then"]
