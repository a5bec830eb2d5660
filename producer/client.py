"""The producer: puts execution requests on rq queues and follows them through Redis.

Everything here speaks the wire contract of ``schemas`` and nothing else, so a
producer never needs the worker's code: jobs are enqueued by function *name*
with rq's JSON serializer, and results come back on plain Redis keys.

Duplicate ids: ``SET P:exec:ID:claimed NX`` inside one script (``CLAIM_LUA``,
atomic, one round trip for any number of ids) that also checks that neither an
rq job nor an outcome exists for the id. Only one of two concurrent submits can
win the SET, and the winner alone enqueues; the checks cover ids whose claim has
expired while the job or its outcome lives on.

``submit_many`` costs two round trips whatever the batch size (claims, then one
MULTI with the jobs and their events) and writes the rq job hashes through
``jobhash.JobWriter``: byte for byte what rq's ``enqueue_many`` writes, checked
against rq itself, at a fraction of its per-job Python work.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
from pydantic import ValidationError
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from schemas import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PREFIX,
    DEFAULT_QUEUE,
    DEFAULT_RETENTION_SECONDS,
    EXECUTION_ID_PATTERN,
    JOB_FUNCTION,
    MIN_MAX_REQUEST_BYTES,
    Event,
    ExecutionRequest,
    ExecutionState,
    Keys,
    LogEntry,
    Outcome,
    as_json_object,
    request_size,
)
from schemas.connections import DEFAULT_REDIS_URL, blocking_twin, clients_from_url
from schemas.replication import DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS

from . import listing
from .cancel import CancelResult
from .cancel import cancel as cancel_execution
from .describe import describe
from .errors import DuplicateExecution, ExecutionNotFound, InvalidRequest, RequestTooLarge
from .files import InputValue, build_input_archive, write_input_archive
from .replicas import ProducerAcks
from .jobhash import JobWriter
from .logs import LogReader
from .outputs import OutputsMixin
from .scripts import CLAIM_LUA, PUBLISH_MANY_LUA
from .status import ExecutionStatusView, build_view
from .waiting import OutcomeWaiter

log = logging.getLogger(__name__)

# rq's own job timeout must not fire before the worker's: the worker enforces
# timeout_seconds on the container, and also pulls the image, stops the
# container (grace period) and, through a Redis outage, waits up to its
# DOCKRQ_OUTCOME_RETRY_SECONDS (600 s by default) to write the outcome, all
# inside the same rq job.
JOB_TIMEOUT_MARGIN_SECONDS = 900
NO_RQ_TIMEOUT = -1  # rq: never kill the work horse; the request has no time limit
_ID_RE = re.compile(EXECUTION_ID_PATTERN)

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


class Producer(OutputsMixin):
    """Submit, wait for, follow and cancel executions. One instance per process is plenty;
    it is safe to share between threads (redis-py pools its connections)."""

    def __init__(
        self,
        redis_url: str = DEFAULT_REDIS_URL,
        queue: str = DEFAULT_QUEUE,
        prefix: str = DEFAULT_PREFIX,
        connection: redis.Redis | None = None,
        *,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        replica_acks: int = 0,
        replica_ack_timeout: float = DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS,
    ) -> None:
        if max_request_bytes < MIN_MAX_REQUEST_BYTES:
            raise ValueError(f"max_request_bytes must be at least {MIN_MAX_REQUEST_BYTES}")
        InvalidRequest.check_storable(prefix, "prefix")
        InvalidRequest.check_storable(queue, "queue")
        if connection is None:
            InvalidRequest.check_storable(redis_url, "redis_url")
            self._client, self._blocking = clients_from_url(redis_url)
        else:
            self._client, self._blocking = connection, blocking_twin(connection)
        self._owns_client = connection is None
        self.redis_url: str | None = redis_url if connection is None else None
        self.queue = queue
        self.keys = Keys(prefix)
        self.retention_seconds = int(retention_seconds)
        # Larger requests are refused before anything is written (RequestTooLarge); keep it
        # at most the workers' DOCKRQ_MAX_REQUEST_BYTES, which reject larger ones unread.
        self.max_request_bytes = int(max_request_bytes)
        # Input files above this (their contents, in all) are refused before anything is
        # written (InputsTooLarge); keep it at most the workers' DOCKRQ_MAX_INPUT_BYTES.
        self.max_input_bytes = int(max_input_bytes)
        self._queues: dict[str, Queue] = {}
        self._writers: dict[str, JobWriter | None] = {}
        self._claim_script = self._client.register_script(CLAIM_LUA)
        # Submissions return, and outcomes are handed to waiters, only once this many replicas
        # have them (Redis WAIT; fewer when fewer are connected): schemas/replication.py.
        self._acks = ProducerAcks(replica_acks, replica_ack_timeout, marker_key=self.keys.replication_marker)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        self._blocking.close()
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> redis.Redis:
        """The non-blocking client (also rq's connection)."""
        return self._client

    def rq_queue(self, name: str | None = None) -> Queue:
        """The rq queue ``name`` (default: this producer's), with the JSON serializer."""
        name = name or self.queue
        if name not in self._queues:
            InvalidRequest.check_storable(name, "queue")
            self._queues[name] = Queue(name, connection=self._client, serializer=JSONSerializer)
        return self._queues[name]

    # -- submit --------------------------------------------------------------

    def submit(
        self,
        request: ExecutionRequest | dict[str, Any] | str | bytes,
        *,
        queue: str | None = None,
        at: datetime | None = None,
        delay: timedelta | None = None,
        inputs: Mapping[str, InputValue] | None = None,
    ) -> str:
        """Enqueue one execution (or schedule it ``at`` a time / after a ``delay``); returns its id.

        ``inputs`` maps container paths to a local file or directory, or bytes: they
        are archived and written to ``P:exec:ID:inputs`` before the enqueue, and the
        worker puts them into the container before it starts (``producer/files.py``).

        Raises InvalidRequest (nothing enqueued; RequestTooLarge above
        ``max_request_bytes``, InputsTooLarge above ``max_input_bytes``) or DuplicateExecution.
        """
        req = parse_request(request)
        if at is not None and delay is not None:
            raise ValueError("give at or delay, not both")
        archive = build_input_archive(inputs, self.max_input_bytes) if inputs is not None else None
        try:
            if archive is not None:
                req = req.model_copy(update={"inputs": archive.spec})
            self._enqueue_one(req, queue, at, delay, archive)
        finally:
            if archive is not None:
                archive.close()
        return req.execution_id

    def _enqueue_one(self, req: ExecutionRequest, queue: str | None, at: datetime | None, delay: timedelta | None,
                     archive: Any) -> None:
        when = datetime.now(timezone.utc) + delay if delay is not None else at
        spec = self._job_spec(req, scheduled=when is not None)
        rq_queue = self.rq_queue(queue)
        self._claim([req.execution_id], rq_queue.name)
        try:
            if archive is not None:  # whole before the job exists, so a worker never finds it missing
                write_input_archive(self._client, self.keys.inputs(req.execution_id), archive, self.retention_seconds)
            with self._client.pipeline() as pipe:
                if when is None:
                    rq_queue.enqueue_call(**spec, pipeline=pipe)
                else:
                    job = rq_queue.create_job(**spec, status=JobStatus.SCHEDULED)
                    rq_queue.schedule_job(job, when, pipeline=pipe)
                self._publish_event(pipe, req.execution_id, spec["meta"]["status"])
                pipe.execute()
        except BaseException:
            if archive is not None:
                self._release_inputs(req.execution_id)
            self._release_claims([req.execution_id])
            raise
        self._acks.confirm_submission(self._client, [req.execution_id])

    def submit_many(
        self, requests: Iterable[ExecutionRequest | dict[str, Any] | str | bytes], *, queue: str | None = None
    ) -> list[str]:
        """Enqueue many executions in one round trip for the claims and one MULTI for the jobs.

        All or nothing: an invalid request (InvalidRequest names its index and
        field; RequestTooLarge its index and size) or a duplicate id
        (DuplicateExecution lists them) enqueues none.
        """
        reqs = []
        for index, request in enumerate(requests):
            try:
                reqs.append(parse_request(request))
            except InvalidRequest as exc:
                raise InvalidRequest(f"requests[{index}]: {exc}") from None
        ids = [r.execution_id for r in reqs]
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        if repeated:
            raise DuplicateExecution(repeated)
        if not reqs:
            return []
        specs = [self._job_spec(r, where=f"requests[{index}]") for index, r in enumerate(reqs)]
        rq_queue = self.rq_queue(queue)
        writer = self._job_writer(rq_queue)
        self._claim(ids, rq_queue.name)
        try:
            with self._client.pipeline() as pipe:
                if writer is not None and all(writer.accepts(s) for s in specs):
                    writer.write(pipe, specs)
                else:
                    rq_queue.enqueue_many([Queue.prepare_data(**s) for s in specs], pipeline=pipe)
                self._publish_events(pipe, ids, ExecutionState.QUEUED.value)
                pipe.execute()
        except BaseException:
            self._release_claims(ids)
            raise
        self._acks.confirm_submission(self._client, ids)
        return ids

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

    def _claim(self, ids: list[str], queue_name: str) -> None:
        keys = [k for i in ids for k in (self.keys.claim(i), Job.key_for(i), self.keys.outcome(i))]
        taken = self._claim_script(keys=keys, args=[queue_name, self.retention_seconds])
        if taken:
            raise DuplicateExecution([ids[int(n) - 1] for n in taken])

    def _release_claims(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            self._client.delete(*(self.keys.claim(i) for i in ids))
        except redis.RedisError as exc:  # the claim expires with the retention time anyway
            log.warning("could not release claims of %d execution(s): %s", len(ids), exc)

    def _release_inputs(self, execution_id: str) -> None:
        try:
            self._client.delete(self.keys.inputs(execution_id))
        except redis.RedisError as exc:  # it expires with the retention time anyway
            log.warning("could not remove the input archive of %s: %s", execution_id, exc)

    def _publish_event(self, pipe: redis.client.Pipeline, execution_id: str, status: str) -> None:
        pipe.publish(self.keys.events, Event(execution_id=execution_id, status=status).model_dump_json())

    def _publish_events(self, pipe: redis.client.Pipeline, ids: list[str], status: str) -> None:
        """One event per id, published by one script call instead of a PUBLISH each."""
        events = [Event(execution_id=i, status=status).model_dump_json() for i in ids]
        pipe.eval(PUBLISH_MANY_LUA, 1, self.keys.events, *events)

    # -- reading -------------------------------------------------------------

    @staticmethod
    def _check_id(execution_id: str) -> None:
        """Refuse what cannot be an id up front: rq reads ``a:b`` as job ``a``."""
        if not isinstance(execution_id, str) or not _ID_RE.match(execution_id):
            raise ExecutionNotFound(str(execution_id), "not an execution id")

    def _outcome(self, execution_id: str) -> Outcome | None:
        raw = self._client.lindex(self.keys.outcome(execution_id), 0)
        return Outcome.model_validate_json(raw) if raw is not None else None

    def _fetch_job(self, execution_id: str) -> Job | None:
        return Job.fetch_many([execution_id], connection=self._client, serializer=JSONSerializer)[0]

    def _presence(self, execution_id: str) -> tuple[bool, bool, bool]:
        """Whether an outcome, an rq job and a claim exist for the id, in one round trip."""
        with self._client.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.outcome(execution_id))
            pipe.exists(Job.key_for(execution_id))
            pipe.exists(self.keys.claim(execution_id))
            outcome, job, claim = (bool(n) for n in pipe.execute())
        return outcome, job, claim

    def _require_known(self, execution_id: str) -> None:
        if not any(self._presence(execution_id)):
            raise ExecutionNotFound(execution_id)

    def wait(self, execution_id: str, timeout: float | None = None) -> Outcome:
        """The outcome, once the execution has ended (at once if it already has).

        Non-destructive, so any number of waiters get it. Raises TimeoutError
        after ``timeout`` seconds, ExecutionNotFound for an unknown id, and
        ExecutionVanished (an ExecutionNotFound) for one Redis no longer knows
        (producer.waiting). Redis outages while waiting are retried with backoff.
        """
        self._check_id(execution_id)
        outcome = self._outcome(execution_id)
        if outcome is not None and self._acks.outcome_confirmed(self._client, execution_id):
            return outcome
        self._require_known(execution_id)
        return OutcomeWaiter(self._client, self._blocking, self.keys, self._acks, self._presence).wait(execution_id, timeout)

    def logs(self, execution_id: str, tail: bool | int = True, follow: bool = True) -> Iterator[LogEntry]:
        """The execution's log entries: history (all, none or the last ``tail``), then live if ``follow``.

        No gap and no duplicate; ends at the final batch, or when the execution
        has ended without one. Raises ExecutionNotFound for an unknown id.
        """
        self._check_id(execution_id)
        if not self._client.exists(self.keys.log_stream(execution_id), self.keys.log_compact(execution_id)):
            self._require_known(execution_id)
        reader = LogReader(
            self._client,
            self._blocking,
            self.keys.log_stream(execution_id),
            self.keys.logs_channel(execution_id),
            tail=tail,
            follow=follow,
            is_over=lambda: self._is_over(execution_id),
            compact_key=self.keys.log_compact(execution_id),
        )
        return iter(reader)

    def _is_over(self, execution_id: str) -> bool:
        """Ended, or gone: a follower asks only after an idle second, long after enqueueing."""
        outcome, job, _ = self._presence(execution_id)
        return outcome or not job

    def status(self, execution_id: str) -> ExecutionStatusView:
        """Where the execution is: the outcome if it ended, else what rq and the worker's meta say."""
        self._check_id(execution_id)
        outcome = self._outcome(execution_id)
        job = self._fetch_job(execution_id)
        if outcome is None and job is None and not self._client.exists(self.keys.claim(execution_id)):
            raise ExecutionNotFound(execution_id)
        return build_view(execution_id, job, outcome)

    def list_recent(
        self, limit: int = 50, queues: Iterable[str] | None = None, *, states: Iterable[ExecutionState | str] | None = None
    ) -> list[ExecutionStatusView]:
        """The newest executions of the queues (default: this producer's; ``queue_names()``
        for every queue), newest first; with ``states`` only those in one of them.

        Reads rq's queue and registries (queued, scheduled, started, finished,
        failed, canceled) without cleaning them: listing must not change state.
        Jobs that are not dockrq executions are left out. Raises ValueError for an
        unknown state.
        """
        wanted = {ExecutionState(s) for s in states} if states is not None else None
        rq_queues = [self.rq_queue(name) for name in (queues or [self.queue])]
        return listing.list_recent(self._client, self.keys, rq_queues, limit, wanted)

    def queue_names(self) -> list[str]:
        """Every rq queue of this Redis database (rq's own ``rq:queues`` set), by name."""
        return listing.queue_names(self._client)

    # -- cancel --------------------------------------------------------------

    def cancel(self, execution_id: str) -> CancelResult:
        """Cancel an execution.

        Queued or scheduled: the rq job is cancelled and a ``cancelled`` outcome
        written, in one transaction that aborts if a worker takes the job
        meanwhile ("cancelled"). Running (or about to be enqueued): the worker is
        told through the flag and the control channel ("signalled"). The flag is
        set in every case so a worker that dequeues the job concurrently sees it.
        Raises ExecutionAlreadyFinished or ExecutionNotFound.
        """
        self._check_id(execution_id)
        return cancel_execution(self._client, self.keys, self.retention_seconds, execution_id)
