"""The producer: puts execution requests on rq queues and follows them through Redis.

Everything here speaks the wire contract of ``schemas`` and nothing else, so a
producer never needs the worker's code: jobs are enqueued by function *name*
with rq's JSON serializer, and results come back on plain Redis keys.

Duplicate ids: ``SET P:exec:ID:claimed NX`` inside one script (``CLAIM_LUA``,
atomic, one round trip for any number of ids) that also checks that neither an
rq job nor an outcome exists for the id. Only one of two concurrent submits can
win the SET, and the winner alone enqueues; the checks cover ids whose claim has
expired while the job or its outcome lives on. ``submit`` of one execution (no input
files) checks the id and writes as one script, ``CLAIM_AND_WRITE_LUA``, with no claim key:
the rq job and then the outcome keep its id taken.

``submit_many`` costs two round trips whatever the batch size (claims, then one
MULTI with the jobs and their events) and writes the rq job hashes through
``jobhash.JobWriter``: byte for byte what rq's ``enqueue_many`` writes, checked
against rq itself, at a fraction of its per-job Python work. What a submit
writes is planned in ``producer.planning`` (no I/O there).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import as_text

from schemas import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PREFIX,
    DEFAULT_QUEUE,
    DEFAULT_RETENTION_SECONDS,
    EXECUTION_ID_PATTERN,
    MIN_MAX_REQUEST_BYTES,
    ExecutionRequest,
    ExecutionState,
    Keys,
    LogEntry,
    Outcome,
)
from schemas.connections import DEFAULT_REDIS_URL, blocking_twin, clients_from_url  # DEFAULT_REDIS_URL re-exported
from schemas.replication import DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS

from . import dependencies, groups, listing, many
from .cancel import CancelResult
from .cancel import cancel as cancel_execution
from .errors import DuplicateExecution, ExecutionNotFound, InvalidRequest
from .files import InputValue, build_input_archive, write_input_archive
from .replicas import ProducerAcks
from .jobhash import JobWriter
from .kept import kept_job
from .logs import LogReader
from .many import DEFAULT_RECHECK_SECONDS, pipelined
from .presence import follow_is_over, presence_commands
from .outputs import OutputsMixin
from .planning import (  # noqa: F401 - re-exported: submit planning lived here before producer.planning
    JOB_TIMEOUT_MARGIN_SECONDS,
    NO_RQ_TIMEOUT,
    Submission,
    SubmitPlanner,
    caller_request,
    parse_request,
    with_inputs,
)
from .reaching import DEFAULT_REDIS_RETRY_SECONDS, first_reads, first_reads_within
from .scripts import CLAIM_AND_WRITE_LUA, CLAIM_LUA
from .status import ExecutionStatusView, build_view
from .waiting import OutcomeWaiter

log = logging.getLogger(__name__)

_ID_RE = re.compile(EXECUTION_ID_PATTERN)

# How long an id may have a claim but no rq job before a waiter calls it gone
# (the claim-then-enqueue window is milliseconds).
VANISH_GRACE_SECONDS = 3.0


class Producer(SubmitPlanner, OutputsMixin):
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
        redis_retry_seconds: float = DEFAULT_REDIS_RETRY_SECONDS,
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
        self._claim_and_write_script = self._client.register_script(CLAIM_AND_WRITE_LUA)
        # Submissions return, and outcomes are handed to waiters, only once this many replicas
        # have them (Redis WAIT; fewer when fewer are connected): schemas/replication.py.
        self._acks = ProducerAcks(replica_acks, replica_ack_timeout, marker_key=self.keys.replication_marker)
        self.redis_retry_seconds = float(redis_retry_seconds)

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
        at_front: bool = False,
        depends_on: Iterable[str] | None = None,
        inputs: Mapping[str, InputValue] | None = None,
    ) -> str:
        """Enqueue one execution (or schedule it ``at`` a time / after a ``delay``); returns its id.

        ``at_front`` puts it at the head of its queue (rq's ``at_front``; a scheduled
        one goes to the head when its time comes). ``depends_on``: it starts only once
        every one of these executions has ``succeeded``, else it ends ``cancelled``
        with error code ``dependency_failed`` (``producer.dependencies``). ``inputs``
        maps container paths to a local file or directory, or bytes: they are archived
        and written to ``P:exec:ID:inputs`` before the enqueue, and the worker puts them
        into the container before it starts (``producer/files.py``). Raises
        InvalidRequest (nothing enqueued; RequestTooLarge above ``max_request_bytes``,
        InputsTooLarge above ``max_input_bytes``; an unknown dependency) or DuplicateExecution.
        """
        req = caller_request(request)  # an inputs manifest only from inputs= (planning.py)
        archive = build_input_archive(inputs, self.max_input_bytes) if inputs is not None else None
        try:
            if archive is not None:
                req = with_inputs(req, archive.spec)  # validated again: planning.py
            prepared = self._prepare_submit(req, queue=queue, at=at, delay=delay, at_front=at_front, depends_on=depends_on)
            return self._run(prepared, archive)[0]
        finally:
            if archive is not None:
                archive.close()

    def submit_many(
        self,
        requests: Iterable[ExecutionRequest | dict[str, Any] | str | bytes],
        *,
        queue: str | None = None,
        group: str | None = None,
        depends_on: Iterable[str] | None = None,
    ) -> list[str]:
        """Enqueue many executions in one round trip for the claims and one MULTI for the jobs.

        All or nothing: an invalid request (InvalidRequest names its index and
        field; RequestTooLarge its index and size) or a duplicate id
        (DuplicateExecution lists them) enqueues none. ``group`` adds them to that
        rq Group (``producer.groups``; ``[A-Za-z0-9_.-]{1,128}``), listed by ``group()``.
        ``depends_on``: every one of them starts only once each of these executions has
        ``succeeded`` (as ``submit(depends_on=)``; unknown ids are refused, InvalidRequest).
        """
        return self._run(self._prepare_submit_many(requests, queue=queue, group=group, depends_on=depends_on))

    def group(self, name: str) -> list[ExecutionStatusView]:
        """The executions of rq group ``name`` still kept (retention), oldest first, with their states.

        An unknown or expired group is an empty list.
        """
        ids = sorted(as_text(i) for i in self._client.smembers(groups.group_key(groups.check_group_name(name))))
        jobs = Job.fetch_many(ids, connection=self._client, serializer=JSONSerializer) if ids else []
        with self._client.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.lindex(self.keys.outcome(execution_id), 0)
            raw_outcomes = pipe.execute() if ids else []
        return groups.views(jobs, ids, raw_outcomes)

    def _run(self, submission: Submission, archive: Any = None) -> list[str]:
        """Claim the ids, then write the jobs in one MULTI (a single submit's input ``archive`` whole
        before it, so a worker never finds it missing); claims and archive are given back if that fails.
        One execution without an archive is claimed and written by one script (CLAIM_AND_WRITE_LUA)."""
        if not submission.ids:
            return []
        if submission.depends_on:
            keys = dependencies.missing_keys(self.keys, submission.depends_on)
            missing = self._client.eval(dependencies.MISSING_LUA, len(keys), *keys)
            if missing:
                raise dependencies.missing_error(submission.depends_on, missing)
        argv = self.scripted_writes(submission) if archive is None else None
        if argv is not None:  # one execution: claim and writes in one script
            if self._claim_and_write_script(keys=self.claim_keys(submission.ids), args=argv):
                raise DuplicateExecution(submission.ids)
            self._acks.confirm_submission(self._client, submission.ids)
            return submission.ids
        self._claim(submission.ids, submission.queue_name)
        try:
            if archive is not None:
                write_input_archive(self._client, self.keys.inputs(submission.ids[0]), archive, self.retention_seconds)
            with self._client.pipeline() as pipe:
                submission.write(pipe)
                pipe.execute()
        except BaseException:
            if archive is not None:
                self._release_inputs(submission.ids[0])
            self._release_claims(submission.ids)
            raise
        self._acks.confirm_submission(self._client, submission.ids)
        return submission.ids

    def _claim(self, ids: list[str], queue_name: str) -> None:
        keys = self.claim_keys(ids)
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
            self._client.delete(self.keys.inputs(execution_id), self.keys.inputs_written(execution_id))
        except redis.RedisError as exc:  # it expires with the retention time anyway
            log.warning("could not remove the input archive of %s: %s", execution_id, exc)

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
        """(outcome exists, rq job exists, claim exists) in one round trip (producer.presence)."""
        outcome, job, claim = (bool(n) for n in pipelined(self._client, presence_commands(self.keys, execution_id)))
        return outcome, job, claim

    def _require_known(self, execution_id: str) -> None:
        """ExecutionNotFound unless an outcome, an rq job or a claim exists: one ``EXISTS`` of the three."""
        if not self._client.exists(self.keys.outcome(execution_id), Job.key_for(execution_id), self.keys.claim(execution_id)):
            raise ExecutionNotFound(execution_id)

    def wait(self, execution_id: str, timeout: float | None = None) -> Outcome:
        """The outcome, once the execution has ended (at once if it already has).

        Non-destructive, so any number of waiters get it. Raises TimeoutError
        after ``timeout`` seconds, ExecutionNotFound for an unknown id, and
        ExecutionVanished (an ExecutionNotFound) for one Redis no longer knows
        (producer.waiting). Redis outages while waiting are retried with backoff, until ``timeout``;
        before Redis first answered, for at most ``redis_retry_seconds`` (producer.reaching).
        """
        self._check_id(execution_id)
        # the waiter's first BLMOVE returns an outcome already there; the rest of ``timeout`` for it
        spent = first_reads_within(lambda: self._require_known(execution_id), self.redis_retry_seconds, timeout,
                                   f"waiting for {execution_id}")
        return OutcomeWaiter(self._client, self._blocking, self.keys, self._acks, self._presence).wait(execution_id, timeout, spent)

    def as_completed(
        self, execution_ids: Iterable[str], timeout: float | None = None, *, recheck_seconds: float = DEFAULT_RECHECK_SECONDS
    ) -> Iterator[Outcome]:
        """Each execution's Outcome once, as it ends, in the order they end (producer.many).

        Two Redis connections whatever the number of ids. Raises ExecutionNotFound
        (unknown ids, before anything is yielded) and WaitTimeout, a TimeoutError
        whose ``pending`` lists the ids not ended after ``timeout`` seconds.
        """
        return many.follow(self._client, self._blocking, self.keys, execution_ids, timeout, recheck_seconds, self.redis_retry_seconds)

    def wait_many(
        self, execution_ids: Iterable[str], timeout: float | None = None, *, recheck_seconds: float = DEFAULT_RECHECK_SECONDS
    ) -> dict[str, Outcome]:
        """All the outcomes as ``{id: Outcome}`` in the order given; errors as ``as_completed``
        (WaitTimeout also carries the ``outcomes`` that had ended)."""
        return many.wait_many(self._client, self._blocking, self.keys, execution_ids, timeout, recheck_seconds, self.redis_retry_seconds)

    def logs(self, execution_id: str, tail: bool | int = True, follow: bool = True) -> Iterator[LogEntry]:
        """The execution's log entries: history (all, none or the last ``tail``), then live if ``follow``.

        No gap and no duplicate; ends at the final batch, or when the execution
        has ended without one. Raises ExecutionNotFound for an unknown id. Redis away is ridden
        out (producer.reaching; once it answered, a follow waits until it is back).
        """
        self._check_id(execution_id)
        logs = (self.keys.log_stream(execution_id), self.keys.log_compact(execution_id))  # else it must be known
        first_reads(lambda: self._client.exists(*logs) or self._require_known(execution_id), self.redis_retry_seconds,
                    f"logs of {execution_id}")
        reader = LogReader(
            self._client,
            self._blocking,
            self.keys.log_stream(execution_id),
            self.keys.logs_channel(execution_id),
            tail=tail,
            follow=follow,
            is_over=lambda: self._is_over(execution_id),
            compact_key=self.keys.log_compact(execution_id),
            retry_seconds=self.redis_retry_seconds,
        )
        return iter(reader)

    def _is_over(self, execution_id: str) -> bool:
        """Ended, or gone (producer.presence.follow_is_over): a follower asks only after an idle second."""
        return follow_is_over(execution_id, *self._presence(execution_id))

    def status(self, execution_id: str) -> ExecutionStatusView:
        """Where the execution is: the outcome if it ended, else what rq and the worker's meta say.
        Redis away is ridden out for ``redis_retry_seconds`` (producer.reaching)."""
        self._check_id(execution_id)
        return first_reads(lambda: self.status_once(execution_id), self.redis_retry_seconds, f"status of {execution_id}")

    def status_once(self, execution_id: str) -> ExecutionStatusView:
        """``status`` with the client's own retry round only (words for a message, not worth a wait)."""
        self._check_id(execution_id)
        outcome = self._outcome(execution_id)
        job = self._fetch_job(execution_id)
        if outcome is None and job is None and not self._client.exists(self.keys.claim(execution_id)):
            raise ExecutionNotFound(execution_id)
        if job is None and outcome is not None:  # its rq job deleted (the dashboard's Delete): what is kept
            kept = kept_job(self._client, self.keys, execution_id, outcome)
            return build_view(execution_id, None, outcome, kept)
        return build_view(execution_id, job, outcome)

    def list_recent(
        self, limit: int = 50, queues: Iterable[str] | None = None, *, states: Iterable[ExecutionState | str] | None = None
    ) -> list[ExecutionStatusView]:
        """The newest executions of the queues (default: this producer's; ``queue_names()``
        for every queue), newest first; with ``states`` only those in one of them.

        Reads rq's queue and registries (queued, scheduled, started, finished,
        failed, canceled) without cleaning them: listing must not change state; and
        dockrq's status index (``P:ended:QUEUE:STATUS``): an ended execution whose rq job
        was deleted is listed while its outcome is kept (``producer.kept``).
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
        """Cancel an execution (``producer.cancel``).

        Queued, scheduled, deferred or waiting for a concurrency slot: the rq job is
        cancelled and a ``cancelled`` outcome written, in one transaction that aborts
        if a worker takes the job meanwhile ("cancelled"). Running (or about to be
        enqueued): the worker is told through the flag and the control channel
        ("signalled"). The flag is set in every case so a worker that dequeues the
        job concurrently sees it. Raises ExecutionAlreadyFinished or ExecutionNotFound.
        """
        self._check_id(execution_id)
        return cancel_execution(self._client, self.keys, self.retention_seconds, execution_id)
