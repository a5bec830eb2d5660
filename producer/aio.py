"""``AsyncProducer``: the Producer for asyncio schedulers, on ``redis.asyncio``.

Same methods, same errors, same wire as ``Producer``: what a submit or a cancel
writes is built by a ``Producer`` used as a *planner* (validation, size limit,
rq job hashes, events; rq's own code) into a redis-py pipeline that is never
sent; its recorded commands are replayed on an asyncio pipeline. The planner's
client has a connection pool that refuses to connect, so nothing sync ever
reaches Redis from here. Waiting uses ``producer.many``'s state machine (two
connections for any number of ids); logs use ``producer.logs``' cursor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import redis
import redis.asyncio as aioredis
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import as_text

from schemas import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_PREFIX, DEFAULT_QUEUE, DEFAULT_RETENTION_SECONDS, ExecutionRequest, LogEntry, Outcome

from schemas.connections import DEFAULT_REDIS_URL, async_client_from_url, ride_out_outage_async
from schemas.outages_noticed import noticing_outages
from schemas.wire import written_key

from . import cancel as cancelling
from . import dependencies, groups
from .aio_logs import AsyncLogReader
from .aio_outputs import AsyncOutputsMixin
from .cancel import CancelResult
from .client import Producer
from .errors import DuplicateExecution, ExecutionNotFound
from .files import InputArchive, InputValue, build_input_archive, write_input_archive_async
from .many import DEFAULT_RECHECK_SECONDS, SLICE_SECONDS, FollowState, ReadOutcomes, WaitTimeout, follow_steps, is_outcome
from .many import outcome_reads, unique_ids
from .presence import follow_is_over, presence_commands
from .reaching import DEFAULT_REDIS_RETRY_SECONDS, UntilAnswered, first_reads_async
from .steps import adrive, arun
from .planning import Submission, caller_request, with_inputs
from .scripts import CLAIM_AND_WRITE_LUA, CLAIM_LUA
from . import kept
from .status import ExecutionStatusView, build_view

log = logging.getLogger(__name__)

Request = ExecutionRequest | dict[str, Any] | str | bytes


class _NoConnectionPool(redis.ConnectionPool):
    """The planner's pool: building commands is fine, sending them is a bug."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("dockrq AsyncProducer: the command planner never talks to Redis")


class _RestoredJob(Job):
    """An rq job read by the asyncio client: its status is what was read, never re-fetched."""

    def get_status(self, refresh: bool = True) -> Any:
        return self._status

    def _fetch_status(self) -> Any:
        return self._status


class AsyncProducer(AsyncOutputsMixin):
    """Submit, wait for, follow and cancel executions, and get their output files, from asyncio code.

    ``connection`` is a ``redis.asyncio.Redis`` (else one is made from ``redis_url``);
    its socket timeout must exceed ``producer.many.SLICE_SECONDS`` (the default 5 s does).
    ``max_input_bytes`` bounds ``submit(inputs=)``'s file contents, as ``Producer``'s does.
    Methods raise exactly what ``Producer``'s do; Redis errors are redis-py's.
    """

    def __init__(
        self,
        redis_url: str = DEFAULT_REDIS_URL,
        queue: str = DEFAULT_QUEUE,
        prefix: str = DEFAULT_PREFIX,
        connection: aioredis.Redis | None = None,
        *,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        redis_retry_seconds: float = DEFAULT_REDIS_RETRY_SECONDS,
    ) -> None:
        self._client = connection if connection is not None else async_client_from_url(redis_url)
        self._owns_client = connection is None
        self.planner = Producer(
            connection=redis.Redis(connection_pool=_NoConnectionPool()),
            queue=queue,
            prefix=prefix,
            retention_seconds=retention_seconds,
            max_request_bytes=max_request_bytes,
            max_input_bytes=max_input_bytes,  # submit(inputs=) refuses more (InputsTooLarge), as Producer
        )
        self.queue = queue
        self.keys = self.planner.keys
        self.retention_seconds = self.planner.retention_seconds
        self.redis_retry_seconds = float(redis_retry_seconds)  # as Producer's (producer.reaching)
        self._claim_script = self._client.register_script(CLAIM_LUA)
        self._claim_and_write_script = self._client.register_script(CLAIM_AND_WRITE_LUA)
        self._server_version: tuple[int, ...] | None = None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def connection(self) -> aioredis.Redis:
        return self._client

    # -- submit --------------------------------------------------------------

    async def submit(
        self,
        request: Request,
        *,
        queue: str | None = None,
        at: datetime | None = None,
        delay: timedelta | None = None,
        at_front: bool = False,
        depends_on: Iterable[str] | None = None,
        inputs: Mapping[str, InputValue] | None = None,
    ) -> str:
        """As ``Producer.submit``, ``inputs`` included: the archive is built in a thread (it reads
        local files) and written before the enqueue, with ``producer.files``' writes."""
        await self._ready(queue)
        req = caller_request(request)  # an inputs manifest only from inputs= (planning.py)
        archive = None
        if inputs is not None:
            archive = await asyncio.to_thread(build_input_archive, inputs, self.planner.max_input_bytes)
        try:
            if archive is not None:
                req = with_inputs(req, archive.spec)  # validated again: planning.py
            submission = self.planner._prepare_submit(
                req, queue=queue, at=at, delay=delay, at_front=at_front, depends_on=depends_on
            )
            return (await self._run(submission, archive))[0]
        finally:
            if archive is not None:
                archive.close()

    async def submit_many(
        self, requests: Iterable[Request], *, queue: str | None = None, group: str | None = None,
        depends_on: Iterable[str] | None = None,
    ) -> list[str]:
        """As ``Producer.submit_many``: all or nothing, two round trips; ``group``, ``depends_on`` as there."""
        await self._ready(queue)
        return await self._run(
            self.planner._prepare_submit_many(requests, queue=queue, group=group, depends_on=depends_on)
        )

    async def group(self, name: str) -> list[ExecutionStatusView]:
        """As ``Producer.group``."""
        ids = sorted(as_text(i) for i in await self._client.smembers(groups.group_key(groups.check_group_name(name))))
        async with self._client.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.hgetall(Job.key_for(execution_id))
                pipe.lindex(self.keys.outcome(execution_id), 0)
            replies = await pipe.execute() if ids else []
        jobs = [self._job(i, raw) for i, raw in zip(ids, replies[0::2], strict=True)]
        return groups.views(jobs, ids, replies[1::2])

    async def _ready(self, queue: str | None) -> None:
        """rq's Queue asks its connection for the server version (as a tuple) before it writes
        a job; the planner's cannot answer, so it is read here, once, and handed to rq."""
        rq_queue = self.planner.rq_queue(queue)
        if rq_queue.redis_server_version is None:
            if self._server_version is None:
                version = (await self._client.info("server"))["redis_version"]
                self._server_version = tuple(int(part) for part in str(version).split(".")[:3])
            rq_queue.redis_server_version = self._server_version

    async def _run(self, submission: Submission, archive: InputArchive | None = None) -> list[str]:
        if not submission.ids:
            return []
        if submission.depends_on:
            keys = dependencies.missing_keys(self.keys, submission.depends_on)
            missing = await self._client.eval(dependencies.MISSING_LUA, len(keys), *keys)
            if missing:
                raise dependencies.missing_error(submission.depends_on, missing)
        argv = self.planner.scripted_writes(submission) if archive is None else None
        if argv is not None:  # one execution: claim and writes in one script, as Producer.submit
            if await self._claim_and_write_script(keys=self.planner.claim_keys(submission.ids), args=argv):
                raise DuplicateExecution(submission.ids)
            return submission.ids
        taken = await self._claim_script(
            keys=self.planner.claim_keys(submission.ids), args=[submission.queue_name, self.retention_seconds]
        )
        if taken:
            raise DuplicateExecution([submission.ids[int(n) - 1] for n in taken])
        inputs_key = self.keys.inputs(submission.ids[0]) if archive is not None else None
        try:
            if archive is not None and inputs_key is not None:  # whole before the job exists, as Producer
                await write_input_archive_async(self._client, inputs_key, archive, self.retention_seconds)
            async with self._client.pipeline() as pipe:
                for args, options in self.planner.recorded(submission):
                    pipe.execute_command(*args, **options)
                await pipe.execute()
        except BaseException:
            await self._release_claims(submission.ids, *([inputs_key, written_key(inputs_key)] if inputs_key else []))
            raise
        return submission.ids

    async def _release_claims(self, ids: list[str], *keys: str) -> None:
        """Give the claims back (and ``keys``: the input archive of a submit that failed)."""
        try:
            await self._client.delete(*(self.keys.claim(i) for i in ids), *keys)
        except redis.RedisError as exc:  # the claim expires with the retention time anyway
            log.warning("could not release claims of %d execution(s): %s", len(ids), exc)

    # -- reading -------------------------------------------------------------

    async def _read(self, execution_id: str) -> tuple[Outcome | None, Job | None, bool]:
        """(outcome, rq job, claim exists) in one round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.lindex(self.keys.outcome(execution_id), 0)
            pipe.hgetall(Job.key_for(execution_id))
            pipe.exists(self.keys.claim(execution_id))
            raw_outcome, raw_job, claimed = await pipe.execute()
        return _outcome(raw_outcome), self._job(execution_id, raw_job), bool(claimed)

    def _job(self, execution_id: str, raw: dict[bytes, bytes] | None) -> Job | None:
        if not raw:
            return None
        job = _RestoredJob(execution_id, connection=self.planner.connection, serializer=JSONSerializer)
        job.restore(raw)
        return job

    async def status(self, execution_id: str) -> ExecutionStatusView:
        """As ``Producer.status`` (Redis away ridden out for ``redis_retry_seconds``)."""
        Producer._check_id(execution_id)
        return await first_reads_async(lambda: self._status(execution_id), self.redis_retry_seconds, f"status of {execution_id}")

    async def _status(self, execution_id: str) -> ExecutionStatusView:
        outcome, job, claimed = await self._read(execution_id)
        if outcome is None and job is None and not claimed:
            raise ExecutionNotFound(execution_id)
        if job is None and outcome is not None:  # its rq job deleted (the dashboard's Delete): what is kept
            queues = kept.queue_names(await self._client.smembers(kept.QUEUES_KEY))
            async with self._client.pipeline(transaction=False) as pipe:
                kept.kept_commands(pipe, self.keys, execution_id, outcome, queues)
                replies = await pipe.execute()
            return build_view(execution_id, None, outcome, kept.kept_from_replies(outcome, queues, replies))
        return build_view(execution_id, job, outcome)

    async def wait(self, execution_id: str, timeout: float | None = None) -> Outcome:
        """As ``Producer.wait`` (TimeoutError, ExecutionNotFound)."""
        Producer._check_id(execution_id)
        try:
            return (await self.wait_many([execution_id], timeout=timeout))[execution_id]
        except WaitTimeout:
            raise TimeoutError(f"execution {execution_id} has not ended after {timeout}s") from None

    async def wait_many(
        self, execution_ids: Iterable[str], timeout: float | None = None, *, recheck_seconds: float = DEFAULT_RECHECK_SECONDS
    ) -> dict[str, Outcome]:
        """As ``Producer.wait_many``."""
        order = unique_ids(execution_ids)
        got: dict[str, Outcome] = {}
        try:
            async for outcome in self.as_completed(order, timeout, recheck_seconds=recheck_seconds):
                got[outcome.execution_id] = outcome
        except WaitTimeout as exc:
            raise WaitTimeout(exc.pending, timeout, {i: got[i] for i in order if i in got}) from None
        return {i: got[i] for i in order}

    async def as_completed(
        self, execution_ids: Iterable[str], timeout: float | None = None, *, recheck_seconds: float = DEFAULT_RECHECK_SECONDS
    ) -> AsyncIterator[Outcome]:
        """As ``Producer.as_completed``: each Outcome once as it ends, on two connections."""
        state = FollowState(unique_ids(execution_ids), timeout, recheck_seconds)
        reach = UntilAnswered(self.redis_retry_seconds)  # Redis never answered: ridden out that long only
        pubsub: aioredis.client.PubSub | None = None

        async def listen() -> None:
            nonlocal pubsub
            if pubsub is None:
                pubsub = await self._subscribe(state)
            state.on_message(await pubsub.get_message(timeout=state.block_for(time.monotonic())))
            while (message := await pubsub.get_message(timeout=0)) is not None:
                state.on_message(message)

        async def away(exc: Exception, failures: int) -> None:
            nonlocal pubsub
            if pubsub is not None:  # a fresh subscription (and with it a full check) once Redis is back
                await _close(pubsub)
                pubsub = None
            if failures == 1:  # once per outage
                log.warning("following %d execution(s): Redis unreachable (%s); retrying until it is back", len(state.pending), exc)

        def in_time() -> bool:
            state.remaining(time.monotonic())  # raises WaitTimeout once the deadline has passed
            return reach.keep_trying()

        async def do(request: ReadOutcomes | str) -> Any:  # producer.many.follow_steps' requests
            if isinstance(request, ReadOutcomes):
                read: Any = lambda: arun(outcome_reads(self.keys, request.ids, request.full), self._pipelined)  # noqa: E731
            else:  # LISTEN
                read = listen
            with noticing_outages() as noticed:
                result = await ride_out_outage_async(read, away, keep_trying=in_time)
            if noticed.seen:  # before the first full check: an unknown id may be lost (producer.reaching)
                state.outage_met()
            reach.answered()
            return result

        try:
            async with aclosing(adrive(follow_steps(state), do, is_outcome)) as outcomes:
                async for outcome in outcomes:
                    yield outcome
        finally:
            if pubsub is not None:
                await _close(pubsub)

    async def _subscribe(self, state: FollowState) -> aioredis.client.PubSub:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self.keys.events)
            deadline = time.monotonic() + SLICE_SECONDS * 5
            while time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=SLICE_SECONDS)
                state.on_message(message)
                if message is not None and message.get("type") == "subscribe":
                    return pubsub
            raise redis.TimeoutError("no subscribe confirmation from Redis")
        except BaseException:
            await _close(pubsub)
            raise

    async def _pipelined(self, commands: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """As ``producer.many.pipelined``, on redis.asyncio."""
        async with self._client.pipeline(transaction=False) as pipe:
            for name, args in commands:
                getattr(pipe, name)(*args)
            return await pipe.execute()

    async def logs(self, execution_id: str, tail: bool | int = True, follow: bool = True) -> AsyncIterator[LogEntry]:
        """As ``Producer.logs``: history then live, no gap, no duplicate."""
        Producer._check_id(execution_id)
        await first_reads_async(lambda: self._require_log(execution_id), self.redis_retry_seconds, f"logs of {execution_id}")

        async def is_over() -> bool:
            return follow_is_over(execution_id, *await self._pipelined(presence_commands(self.keys, execution_id)))

        reader = AsyncLogReader(
            self._client, self.keys.log_stream(execution_id), self.keys.logs_channel(execution_id),
            tail=tail, follow=follow, is_over=is_over, compact_key=self.keys.log_compact(execution_id),
            retry_seconds=self.redis_retry_seconds,
        )
        async for entry in reader:
            yield entry

    async def _require_log(self, execution_id: str) -> None:
        if not await self._client.exists(self.keys.log_stream(execution_id), self.keys.log_compact(execution_id)):
            outcome, job, claimed = await self._read(execution_id)
            if outcome is None and job is None and not claimed:
                raise ExecutionNotFound(execution_id)

    # -- cancel --------------------------------------------------------------

    async def cancel(self, execution_id: str) -> CancelResult:
        """As ``Producer.cancel``: one WATCHed transaction, retried when a worker takes the job meanwhile."""
        Producer._check_id(execution_id)
        outcome_key, job_key = self.keys.outcome(execution_id), Job.key_for(execution_id)
        while True:
            async with self._client.pipeline() as pipe:
                await pipe.watch(outcome_key, job_key)
                raw_outcome = await pipe.lindex(outcome_key, 0)
                job = self._job(execution_id, await pipe.hgetall(job_key))
                claimed = job is not None or bool(await pipe.exists(self.keys.claim(execution_id)))
                recorder = self.planner.connection.pipeline()
                try:
                    result = cancelling.cancel_commands(
                        recorder, self.keys, self.retention_seconds, execution_id, _outcome(raw_outcome), job, claimed
                    )
                    commands = list(recorder.command_stack)
                finally:
                    recorder.reset()
                pipe.multi()
                for args, options in commands:
                    pipe.execute_command(*args, **options)
                try:
                    await pipe.execute()
                except redis.WatchError:
                    continue
                return result


def _outcome(raw: Any) -> Outcome | None:
    return Outcome.model_validate_json(raw) if raw is not None else None


async def _close(pubsub: aioredis.client.PubSub) -> None:
    try:
        await pubsub.aclose()
    except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
        pass
