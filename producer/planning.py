"""Submit planning: a request validated and turned into the rq writes of one MULTI, with no I/O.

``Producer`` (producer.client) claims the ids and sends what is planned here;
``AsyncProducer`` (producer.aio) records the same writes from a pipeline that is
never sent and replays them on its asyncio connection, so the two cannot drift.

What one execution becomes in rq, by how it was submitted:

- plain: rq's ``enqueue_call`` (``submit_many``: ``jobhash.JobWriter``, byte for byte
  what rq's ``enqueue_many`` writes, or ``enqueue_many`` itself);
- ``at``/``delay``: rq's ``schedule_job`` (ScheduledJobRegistry; rq's scheduler enqueues it);
- ``depends_on``: a ``deferred`` job as rq's ``setup_dependencies`` writes one (producer.dependencies);
- ``concurrency_key``/``concurrency_limit``: rq's ``RateLimit`` (producer.concurrency): the
  job waits ``rate_limited`` until a slot is free; scheduled or deferred ones join the
  wait when rq enqueues them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import redis
from pydantic import ValidationError
from rq import Queue
from rq.job import Dependency, Job, JobStatus

from schemas import (
    JOB_FUNCTION,
    Event,
    ExecutionRequest,
    ExecutionState,
    InputsSpec,
    Keys,
    as_json_object,
    request_size,
)

from . import concurrency, dependencies, groups
from .describe import describe
from .errors import DuplicateExecution, InvalidRequest, RequestTooLarge
from .jobhash import JobWriter
from .scripts import PUBLISH_MANY_LUA

if TYPE_CHECKING:
    from rq.rate_limit import RateLimit

# rq's own job timeout must not fire before the worker's: the worker enforces
# timeout_seconds on the container, and also pulls the image, stops the
# container (grace period) and, through a Redis outage, waits up to its
# DOCKRQ_OUTCOME_RETRY_SECONDS (600 s by default) to write the outcome, all
# inside the same rq job.
JOB_TIMEOUT_MARGIN_SECONDS = 900
NO_RQ_TIMEOUT = -1  # rq: never kill the work horse; the request has no time limit


# Commands Redis refuses inside a Lua script (besides blocking ones, which a write never is).
NOT_IN_SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "MULTI", "EXEC", "WATCH"})


@dataclass
class Submission:
    """One submit, validated and built: ``write(pipe)`` queues its rq jobs and events into a MULTI."""

    ids: list[str]
    queue_name: str
    write: Callable[[redis.client.Pipeline], None]
    depends_on: list[str] = field(default_factory=list)  # must exist (job or outcome) before anything is written


def parse_request(request: ExecutionRequest | dict[str, Any] | str | bytes) -> ExecutionRequest:
    """A validated request from a model, a dict or a JSON document, or InvalidRequest naming the field."""
    if isinstance(request, ExecutionRequest):
        return request
    try:
        return ExecutionRequest.model_validate(as_json_object(request))
    except ValidationError as exc:
        raise InvalidRequest.from_validation_error(exc) from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request: not a JSON document: {exc}") from None


def caller_request(request: ExecutionRequest | dict[str, Any] | str | bytes, where: str = "request") -> ExecutionRequest:
    """``parse_request`` for a request a caller hands to ``submit``/``submit_many``: its ``inputs``
    manifest must be absent, since only the producer writes it, from ``submit(inputs=)``, next to
    the archive it describes (a manifest without its archive is rejected by the worker later:
    ``invalid_inputs``). InvalidRequest naming the field, before anything is written."""
    req = parse_request(request)
    if req.inputs is not None:
        raise InvalidRequest(
            f"{where}.inputs: set by the producer from submit(inputs={{CONTAINER_PATH: local path or bytes}}); "
            "remove it from the request"
        )
    return req


def with_inputs(request: ExecutionRequest, spec: InputsSpec) -> ExecutionRequest:
    """``request`` announcing the input archive ``spec``, validated again as a whole (where its
    paths land against tmpfs, mounts and read_only: schemas/placement.py), or InvalidRequest."""
    try:
        return ExecutionRequest.model_validate({**request.model_dump(), "inputs": spec})
    except ValidationError as exc:
        raise InvalidRequest.from_validation_error(exc) from None


class SubmitPlanner:
    """The planning half of ``Producer`` (a mixin): needs ``_client``, ``keys``,
    ``retention_seconds``, ``max_request_bytes``, ``_writers`` and ``rq_queue()``."""

    _client: redis.Redis
    keys: Keys
    retention_seconds: int
    max_request_bytes: int
    _writers: dict[str, JobWriter | None]

    def rq_queue(self, name: str | None = None) -> Queue:  # pragma: no cover - provided by Producer
        raise NotImplementedError

    def _prepare_submit(
        self,
        request: ExecutionRequest | dict[str, Any] | str | bytes,
        *,
        queue: str | None,
        at: datetime | None,
        delay: timedelta | None,
        at_front: bool,
        depends_on: Iterable[str] | None = None,
    ) -> Submission:
        req = parse_request(request)
        if at is not None and delay is not None:
            raise ValueError("give at or delay, not both")
        deps = dependencies.check_depends_on(req.execution_id, depends_on or ())
        if deps and (at is not None or delay is not None):
            raise ValueError("give depends_on or a start time (at/delay), not both")
        when = datetime.now(timezone.utc) + delay if delay is not None else at
        spec = self._job_spec(req, scheduled=when is not None)
        limit = concurrency.rate_limit(req)
        rq_queue = self.rq_queue(queue)

        def write(pipe: redis.client.Pipeline) -> None:
            if deps:
                _write_deferred(pipe, rq_queue, spec, deps, limit, at_front=at_front)
            elif when is not None:
                job = rq_queue.create_job(**spec, status=JobStatus.SCHEDULED, rate_limit=limit)
                job.enqueue_at_front = at_front or None
                rq_queue.schedule_job(job, when, pipeline=pipe)
            elif limit is not None:
                concurrency.enqueue_limited(rq_queue, rq_queue.create_job(**spec, rate_limit=limit), pipe, at_front=at_front)
            elif not at_front and (writer := self._job_writer(rq_queue)) is not None and writer.accepts(spec):
                writer.write(pipe, [spec])  # rq's writes for it, the job hash in one HSET (producer.jobhash)
            else:
                rq_queue.enqueue_call(**spec, pipeline=pipe, at_front=at_front)
            self._publish_event(pipe, req.execution_id, spec["meta"]["status"])

        return Submission([req.execution_id], rq_queue.name, write, deps)

    def _prepare_submit_many(
        self,
        requests: Iterable[ExecutionRequest | dict[str, Any] | str | bytes],
        *,
        queue: str | None,
        group: str | None = None,
        depends_on: Iterable[str] | None = None,
    ) -> Submission:
        if group is not None:
            groups.check_group_name(group)
        deps = dependencies.check_depends_on("", depends_on or ())
        reqs = []
        for index, request in enumerate(requests):
            try:
                reqs.append(caller_request(request))
            except InvalidRequest as exc:
                raise InvalidRequest(f"requests[{index}]: {exc}") from None
        ids = [r.execution_id for r in reqs]
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        if repeated:
            raise DuplicateExecution(repeated)
        for index, execution_id in enumerate(ids):
            if execution_id in deps:
                raise InvalidRequest(f"requests[{index}]: depends_on: an execution cannot depend on itself ({execution_id})")
        specs = [self._job_spec(r, where=f"requests[{index}]") for index, r in enumerate(reqs)]
        limits = [concurrency.rate_limit(r) for r in reqs]
        plain = [s for s, limit in zip(specs, limits, strict=True) if limit is None]
        limited: list[tuple[dict[str, Any], RateLimit]] = [
            (s, limit) for s, limit in zip(specs, limits, strict=True) if limit is not None
        ]
        rq_queue = self.rq_queue(queue)
        writer = self._job_writer(rq_queue) if plain else None

        def write(pipe: redis.client.Pipeline) -> None:
            if deps:  # every one deferred until all of depends_on succeeded, as submit(depends_on=) writes it
                for spec, limit in zip(specs, limits, strict=True):
                    _write_deferred(pipe, rq_queue, spec, deps, limit, at_front=False, group=group)
            elif plain and group is None and writer is not None and all(writer.accepts(s) for s in plain):
                writer.write(pipe, plain)
            elif plain:
                rq_queue.enqueue_many([Queue.prepare_data(**s) for s in plain], pipeline=pipe, group_id=group)
            for spec, limit in limited if not deps else ():
                job = rq_queue.create_job(**spec, rate_limit=limit, group_id=group)
                concurrency.enqueue_limited(rq_queue, job, pipe, at_front=False)
            if group is not None:
                groups.write_group(pipe, group, ids)
            self._publish_events(pipe, ids, ExecutionState.QUEUED.value)

        return Submission(ids, rq_queue.name, write, deps)

    def recorded(self, submission: Submission) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """The commands ``submission`` writes, recorded from a pipeline that is never sent."""
        pipe = self._client.pipeline()
        try:
            submission.write(pipe)
            return [(tuple(args), dict(options)) for args, options in pipe.command_stack]
        finally:
            pipe.reset()

    def scripted_writes(self, submission: Submission) -> list[Any] | None:
        """ARGV of CLAIM_AND_WRITE_LUA for a one-execution ``submission``: its writes, flattened;
        None when they cannot run inside a script (rq's rate limit runs a script of its own)."""
        if len(submission.ids) != 1:
            return None
        argv: list[Any] = []
        for args, _options in self.recorded(submission):
            if str(args[0]).upper() in NOT_IN_SCRIPTS:
                return None
            argv += [len(args), *args]
        return argv

    def claim_keys(self, ids: list[str]) -> list[str]:
        """KEYS of CLAIM_LUA for ``ids``: per id its claim, rq job and outcome keys."""
        return [k for i in ids for k in (self.keys.claim(i), Job.key_for(i), self.keys.outcome(i))]

    def _job_writer(self, rq_queue: Queue) -> JobWriter | None:
        """Batched job hashes for this queue, once checked against rq's own enqueue_many."""
        if rq_queue.name not in self._writers:
            probes = [
                self._job_spec(parse_request(p))
                for p in (
                    {"execution_id": "dockrq-probe-a", "engine": {"image": "probe-a", "cmd": ["true"]}},
                    {
                        "execution_id": "dockrq-probe-b",
                        "engine": {"image": "probe/b:1", "cmd": ["sh", "-c", "exit 0"], "env": {"K": "v"}},
                        "timeout_seconds": 5,
                    },
                )
            ]
            self._writers[rq_queue.name] = JobWriter.for_queue(rq_queue, probes)
        return self._writers[rq_queue.name]

    def _job_spec(self, req: ExecutionRequest, *, scheduled: bool = False, where: str = "request") -> dict[str, Any]:
        """Keyword arguments shared by rq's enqueue_call, create_job and prepare_data.

        Raises RequestTooLarge (``where`` names the request) before anything else is made of it.
        """
        payload = req.model_dump(mode="json")
        size = request_size(payload)
        if size > self.max_request_bytes:
            raise RequestTooLarge(size, self.max_request_bytes, where)
        if req.timeout_seconds is None:
            timeout = NO_RQ_TIMEOUT
        else:
            timeout = math.ceil(req.timeout_seconds) + JOB_TIMEOUT_MARGIN_SECONDS
        status = ExecutionState.SCHEDULED if scheduled else ExecutionState.QUEUED
        return {
            "func": JOB_FUNCTION,
            "args": (payload,),
            "timeout": timeout,
            # The rq job lives as long as the outcome, so status() keeps its meta.
            "result_ttl": self.retention_seconds,
            "failure_ttl": self.retention_seconds,
            "description": describe(req),
            "job_id": req.execution_id,
            "meta": {"execution_id": req.execution_id, "image": req.engine.image, "status": status.value},
        }

    def _publish_event(self, pipe: redis.client.Pipeline, execution_id: str, status: str) -> None:
        pipe.publish(self.keys.events, Event(execution_id=execution_id, status=status).model_dump_json())

    def _publish_events(self, pipe: redis.client.Pipeline, ids: list[str], status: str) -> None:
        """One event per id, published by one script call instead of a PUBLISH each."""
        events = [Event(execution_id=i, status=status).model_dump_json() for i in ids]
        pipe.eval(PUBLISH_MANY_LUA, 1, self.keys.events, *events)


def _write_deferred(
    pipe: redis.client.Pipeline, rq_queue: Queue, spec: dict[str, Any], deps: list[str], limit: RateLimit | None,
    *, at_front: bool, group: str | None = None,
) -> None:
    """One job waiting on ``deps``, as rq's ``setup_dependencies`` writes a job whose dependencies
    are unfinished (status ``deferred``, DeferredJobRegistry, each dependency's dependents set)."""
    job = rq_queue.create_job(
        **spec, depends_on=Dependency(jobs=deps, allow_failure=True), status=JobStatus.DEFERRED,
        rate_limit=limit, group_id=group,
    )
    job.redis_server_version = rq_queue.get_redis_server_version()
    job.enqueue_at_front = at_front or None
    job.register_dependency(pipeline=pipe)
    job.save(pipeline=pipe)
