"""Many rq jobs at once, written exactly as rq's own ``enqueue_many`` writes them.

rq builds a full ``Job`` object per call, serializes it with ``to_dict()`` and
sends three commands per job (``HSET status``, ``HSET`` of every field,
``RPUSH``); for a batch of thousands that per-job Python work and command
packing are most of the cost of ``Producer.submit_many``. Every job a producer
enqueues has the same shape (function, queue, TTLs, callbacks: none), so here
the hash of a job is rq's hash of a *probe* job with the few fields that differ
per job replaced (``data``, ``description``, ``meta``, ``timeout`` and the
timestamps), and a batch is one ``HSET`` per job plus one ``RPUSH`` of all ids.

That this is exactly what rq writes is checked against rq itself, once per
queue: rq's ``enqueue_many`` runs for two probe jobs that differ in every
varying field into a pipeline that is then discarded (nothing reaches Redis),
and its commands must equal the ones derived here, field for field and in
order. If they do not (a future rq writes something else), ``for_queue``
returns None and the producer keeps using rq's ``enqueue_many``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from typing import Any

from redis.client import Pipeline
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import now, utcformat

from schemas.connections import REDIS_DOWN

log = logging.getLogger(__name__)

# The fields of rq's job hash that differ from one of our jobs to the next.
TIMESTAMPS = ("created_at", "enqueued_at")
VARYING = (*TIMESTAMPS, "data", "description", "meta", "timeout")
# What a job spec may carry for this writer; anything else goes through rq.
SPEC_KEYS = frozenset({"func", "args", "timeout", "result_ttl", "failure_ttl", "description", "job_id", "meta"})


class JobWriter:
    """Writes queued rq jobs of one queue into a pipeline: ``write(pipe, specs)``."""

    def __init__(self, queue: Queue, template: dict[str, Any], fixed: dict[str, Any]) -> None:
        self.queue = queue
        self._fixed = fixed  # spec values the template was made with (func, TTLs)
        self._dumps = queue.serializer.dumps
        # rq's hash of a probe job, encoded once as redis-py would send it; the
        # VARYING fields are replaced per job (bytes pass redis-py's encoder as they are).
        encode = queue.connection.get_encoder().encode
        self._encode = encode
        self._template = {encode(k): encode(v) for k, v in template.items()}
        self._varying = {name: encode(name) for name in VARYING}

    @classmethod
    def for_queue(cls, queue: Queue, probes: Sequence[dict[str, Any]]) -> JobWriter | None:
        """A writer for ``queue`` if it writes what rq writes for ``probes`` (two job specs
        differing in every varying field, same func and TTLs as the real ones); else None."""
        try:
            first, second = probes
            jobs, commands = _rq_commands(queue, probes)
            template = jobs[0].to_dict()
            if not set(VARYING) <= set(template) or set(first) - SPEC_KEYS:
                raise ValueError(f"unexpected job fields: {sorted(template)}")
            fixed = {k: first[k] for k in ("func", "result_ttl", "failure_ttl")}
            writer = cls(queue, template, fixed)
            expected = [("SADD", Queue.redis_queues_keys, queue.key)]
            for job, spec in zip(jobs, probes, strict=True):
                stamps = {k: writer._encode(utcformat(getattr(job, k))) for k in TIMESTAMPS}
                flat = [item for pair in writer.mapping(spec, stamps).items() for item in pair]
                expected += [
                    ("HSET", job.key, "status", JobStatus.QUEUED),
                    ("HSET", job.key, *flat),
                    ("RPUSH", queue.key, spec["job_id"]),
                ]
            # Compared as the bytes redis-py would send.
            if [_encoded(writer._encode, c) for c in commands] != [_encoded(writer._encode, c) for c in expected]:
                raise ValueError("rq's enqueue_many writes other commands than expected")
        except REDIS_DOWN:
            raise  # Redis is away, not a mismatch: the caller says so once (and checks again next time)
        except Exception as exc:  # noqa: BLE001 - anything unexpected: rq's own path is always right
            log.warning("enqueueing through rq's enqueue_many (batched job hashes not usable: %s)", exc)
            return None
        return writer

    def accepts(self, spec: dict[str, Any]) -> bool:
        return set(spec) <= SPEC_KEYS and all(spec.get(k) == v for k, v in self._fixed.items())

    def mapping(self, spec: dict[str, Any], stamps: dict[str, bytes]) -> dict[bytes, bytes]:
        """rq's hash of the queued job ``spec`` (``Job.to_dict()`` after enqueueing), encoded."""
        fields = dict(self._template)
        encode, name = self._encode, self._varying
        for field in TIMESTAMPS:
            fields[name[field]] = stamps[field]
        # Job.data: the serialized (func, instance, args, kwargs), zlib-compressed by to_dict().
        fields[name["data"]] = zlib.compress(self._dumps((spec["func"], None, spec["args"], {})))
        fields[name["description"]] = encode(spec["description"])
        fields[name["meta"]] = encode(self._dumps(spec["meta"]))
        fields[name["timeout"]] = encode(spec["timeout"])
        return fields

    def write(self, pipe: Pipeline, specs: Sequence[dict[str, Any]]) -> None:
        """Queue ``specs`` (in order) as rq jobs: one HSET per job and one RPUSH for all."""
        stamp = self._encode(utcformat(now()))
        stamps = dict.fromkeys(TIMESTAMPS, stamp)
        pipe.sadd(Queue.redis_queues_keys, self.queue.key)
        for spec in specs:
            pipe.hset(Job.key_for(spec["job_id"]), mapping=self.mapping(spec, stamps))
        pipe.rpush(self.queue.key, *(spec["job_id"] for spec in specs))


def _encoded(encode: Any, command: tuple[Any, ...]) -> list[bytes]:
    return [encode(arg) for arg in command]


def _rq_commands(queue: Queue, specs: Sequence[dict[str, Any]]) -> tuple[list[Job], list[tuple[Any, ...]]]:
    """The jobs rq's enqueue_many makes for ``specs`` and the commands it would send (none is sent)."""
    pipe = queue.connection.pipeline()
    try:
        jobs = queue.enqueue_many([Queue.prepare_data(**spec) for spec in specs], pipeline=pipe)
        return jobs, [tuple(args) for args, _options in pipe.command_stack]
    finally:
        pipe.reset()
