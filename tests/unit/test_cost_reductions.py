"""Issue 14's reductions against fakeredis: the compact log and its readers, the log retention,
one copy of the result, and rq's bookkeeping with fewer commands."""

from __future__ import annotations

import threading
import time
import zlib

import pytest
from rq import Queue, Worker
from rq.registry import StartedJobRegistry

from producer import Producer
from schemas import Keys, LogBatch, LogEntry
from schemas.compact_log import COMPACT_MAX_BYTES, decode_compact_log, encode_compact_log, read_compact_log
from worker.config.settings import WorkerSettings
from worker.execution.channels import ExecutionChannels
from worker.execution.logs import LogResume
from worker.service.bookkeeping import SCHEDULER_BEAT_SECONDS, FewerCommands, LeanScheduler
from worker.service.heartbeat import Heartbeat

pytest.importorskip("lupa", reason="fakeredis needs lupa (fakeredis[lua]) to run the outcome script")

KEYS = Keys("p")


def entries(n, start=0, data="line"):
    return [LogEntry(stream="stdout" if i % 3 else "stderr", ts=1.0, data=f"{data} {start + i}\n") for i in range(n)]


def channels(r, eid="ex", **kw):
    options = {"worker": "w1", "retention_seconds": 600, "log_stream_maxlen": 1000, **kw}
    return ExecutionChannels(r, KEYS, eid, **options)


@pytest.fixture
def producer(fake_redis):
    with Producer(connection=fake_redis, queue="q", prefix="p") as p:
        p.submit({"execution_id": "ex", "engine": {"image": "busybox"}})
        yield p


# -- the compact log --------------------------------------------------------------------


def test_encoding_round_trips_json_and_zlib():
    small = [LogBatch(seq=0, entries=entries(2)), LogBatch(seq=2, eof=True)]
    raw = encode_compact_log(small)
    assert raw[:1] == b"[" and decode_compact_log(raw) == small
    big = [LogBatch(seq=0, entries=entries(200)), LogBatch(seq=200, eof=True)]
    packed = encode_compact_log(big)
    assert packed[:1] != b"[" and zlib.decompress(packed)[:1] == b"["
    assert decode_compact_log(packed) == big
    with pytest.raises(ValueError):
        decode_compact_log(b"\x00not a log")


def test_an_ended_small_log_is_one_string_and_every_reader_gets_it(fake_redis, producer):
    ch = channels(fake_redis, log_retention_seconds=120)
    assert ch.send_logs(entries(3)) and ch.send_logs(entries(2, start=3))
    ch.send_eof()
    assert not fake_redis.exists(KEYS.log_stream("ex"))
    assert 0 < fake_redis.ttl(KEYS.log_compact("ex")) <= 120  # DOCKRQ_LOG_RETENTION_SECONDS
    want = [e.data for e in entries(5)]
    assert [e.data for e in producer.logs("ex", follow=False)] == want
    assert [e.data for e in producer.logs("ex", follow=True)] == want  # ends: eof is in the compact log
    assert [e.data for e in producer.logs("ex", tail=2, follow=True)] == want[-2:]
    assert list(producer.logs("ex", tail=0, follow=True)) == []
    resume = LogResume.read(fake_redis, KEYS.log_stream("ex"), KEYS.log_compact("ex"))
    assert (resume.entries, resume.ended) == (5, True)
    assert sum(resume.chars.values()) == sum(len(d) for d in want)


def test_a_follower_reading_while_the_log_is_compacted_sees_every_entry_once(fake_redis, producer):
    ch = channels(fake_redis)
    ch.send_logs(entries(4))
    got: list[str] = []
    follower = threading.Thread(target=lambda: got.extend(e.data for e in producer.logs("ex", follow=True)), daemon=True)
    follower.start()
    deadline = time.monotonic() + 5
    while fake_redis.pubsub_numsub(KEYS.logs_channel("ex"))[0][1] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    ch.send_logs(entries(3, start=4))
    ch.send_eof()
    follower.join(10)
    assert not follower.is_alive()
    assert got == [e.data for e in entries(7)]


def test_large_and_resumed_logs_keep_their_stream(fake_redis):
    big = channels(fake_redis, eid="big")
    size = COMPACT_MAX_BYTES // 1000 + 2
    for i in range(size):
        big.send_logs([LogEntry(stream="stdout", ts=1.0, data="x" * 1000)])
    big.send_eof()
    assert fake_redis.exists(KEYS.log_stream("big")) and not fake_redis.exists(KEYS.log_compact("big"))

    resumed = channels(fake_redis, eid="adopted")
    resumed.resume_logs(3)  # another worker shipped the first three entries
    resumed.send_logs(entries(2, start=3))
    resumed.send_eof()
    assert not fake_redis.exists(KEYS.log_compact("adopted"))
    assert fake_redis.xlen(KEYS.log_stream("adopted")) == 2


def test_a_log_already_ended_compact_gets_nothing_more(fake_redis):
    first = channels(fake_redis)
    first.send_logs(entries(2))
    first.send_eof()
    resume = LogResume.read(fake_redis, KEYS.log_stream("ex"), KEYS.log_compact("ex"))
    adopter = channels(fake_redis)
    adopter.resume_logs(resume.entries, ended=resume.ended)
    assert adopter.send_logs(entries(1, start=2)) is False
    adopter.send_eof()
    assert not fake_redis.exists(KEYS.log_stream("ex"))  # no eof-only stream hiding the compact log
    assert [b.seq for b in read_compact_log(fake_redis, KEYS.log_compact("ex"))] == [0, 2]


def test_log_retention_setting():
    assert WorkerSettings.load({}).log_retention_seconds is None
    assert WorkerSettings.load({"DOCKRQ_LOG_RETENTION_SECONDS": "3600"}).log_retention_seconds == 3600
    with pytest.raises(ValueError, match="log_retention_seconds"):
        WorkerSettings.load({"DOCKRQ_LOG_RETENTION_SECONDS": "0"})


# -- rq's bookkeeping ---------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.beats: list[int | None] = []
        self.states: list[str] = []
        self.suspension_checks = 0

    def heartbeat(self, timeout=None, pipeline=None):
        self.beats.append(timeout)

    def set_state(self, state, pipeline=None):
        self.states.append(state)

    def check_for_suspension(self, burst):
        self.suspension_checks += 1

    def reorder_queues(self, reference_queue):
        pass


class _Worker(FewerCommands, _Recorder):
    worker_ttl = 420

    def __init__(self, connection) -> None:
        _Recorder.__init__(self)
        self.connection = connection


def test_repeated_heartbeats_and_states_are_not_sent_again(fake_redis):
    w = _Worker(fake_redis)
    w.heartbeat()
    w.heartbeat()
    w.heartbeat(90)  # a shorter TTL than the last one: still covered
    assert len(w.beats) == 1 and not w.beat_is_older_than(5)
    w.heartbeat(10_000)  # a longer TTL goes out
    assert len(w.beats) == 2
    w.set_state("idle")
    w.set_state("idle")
    w.set_state("busy")
    w.set_state("idle")
    assert w.states == ["idle", "busy", "idle"]


def test_only_the_heartbeat_right_after_a_dequeue_is_left_to_the_jobs_start(fake_redis):
    w = _Worker(fake_redis)
    w.reorder_queues(None)  # rq: a job was dequeued
    w.heartbeat()  # rq's heartbeat after it: the start transaction carries it
    assert w.beats == []
    w.heartbeat()  # the job never started (an error in between): the next one goes out as ever
    assert w.beats == [None]


def test_a_jobs_start_is_one_transaction_with_rqs_writes(fake_redis, monkeypatch):
    """prepare_execution + prepare_job_execution of rq 3.0, as one MULTI: what rq's readers read is there."""

    class Lean(FewerCommands, Worker):
        pass

    queue = Queue("q", connection=fake_redis)
    job = queue.enqueue("os.getcwd")
    worker = Lean([queue], connection=fake_redis, name="w1")
    worker.register_birth()
    queue.pop_job_id()  # off the queue, as a dequeue leaves it
    sent = []
    pipe_class = type(fake_redis.pipeline())
    real_execute = pipe_class.execute

    def counting(pipe, *args, **kwargs):
        sent.append(len(pipe.command_stack))
        return real_execute(pipe, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "execute", counting)
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)  # already written: nothing sent
    monkeypatch.undo()
    assert len(sent) == 1
    job.refresh()
    assert job.get_status() == "started" and job.worker_name == "w1" and job.last_heartbeat is not None
    assert fake_redis.ttl(job.key) == -1  # PERSIST
    assert (job.id, execution.id) in StartedJobRegistry("q", connection=fake_redis).get_job_and_execution_ids()
    assert worker.get_state() == "busy" and Worker.find_by_key(worker.key, connection=fake_redis).last_heartbeat
    assert fake_redis.ttl(worker.key) > 0
    assert fake_redis.exists(execution.key)
    # the worker's index of its executions lives no longer than the record (rq's heartbeat sets it so)
    assert 0 < fake_redis.ttl(worker.executions_key) <= fake_redis.ttl(execution.key)


def test_suspension_is_checked_with_one_exists(fake_redis):
    w = _Worker(fake_redis)
    w.check_for_suspension(False)
    assert w.suspension_checks == 0
    fake_redis.set("rq:suspended", 1)
    w.check_for_suspension(False)
    assert w.suspension_checks == 1  # rq's own loop runs only when suspended


def test_lean_scheduler_refreshes_its_lock_every_20_seconds(monkeypatch):
    sent: list[float] = []
    monkeypatch.setattr("rq.scheduler.RQScheduler.heartbeat", lambda self: sent.append(time.monotonic()))
    clock = [1000.0]
    monkeypatch.setattr("worker.service.bookkeeping.time.monotonic", lambda: clock[0])
    s = LeanScheduler.__new__(LeanScheduler)
    for _ in range(45):
        s.heartbeat()
        clock[0] += 1
    assert len(sent) == 3 and SCHEDULER_BEAT_SECONDS == 20.0


def test_an_idle_worker_heartbeats_every_idle_interval(monkeypatch):
    beats: list[float] = []

    class Idle:
        executions: dict = {}
        last = float("-inf")
        registration = None

        def heartbeat(self, raise_errors=False, check_registration=False):
            beats.append(time.monotonic())
            self.last = time.monotonic()

        def beat_is_older_than(self, seconds):
            return time.monotonic() - self.last >= seconds

    class NoAdoptions:
        def active(self):
            return set()

        def keep_alive(self):
            pass

    hb = Heartbeat(Idle(), NoAdoptions(), 0.05, idle_interval=0.5)
    hb.start()
    time.sleep(1.2)
    hb.stop()
    assert 1 <= len(beats) <= 3  # every ~0.5 s, not every 0.05 s


def test_the_result_is_the_outcome_only(fake_redis):
    from rq import Queue
    from rq.serializers import JSONSerializer

    from worker.service.job import DockrqJob

    q = Queue("q", connection=fake_redis, serializer=JSONSerializer, job_class=DockrqJob)
    job = q.enqueue("worker.jobs.execute", {"execution_id": "ex"}, job_id="ex", result_ttl=600)
    job._result = {"execution_id": "ex", "status": "succeeded", "exit_code": 0}
    with fake_redis.pipeline() as pipe:
        job._handle_success(600, pipe, worker_name="w1")
        pipe.execute()
    assert not fake_redis.exists("rq:results:ex")
    assert fake_redis.hget(job.key, "status") == b"finished"
    assert job.id in q.finished_job_registry.get_job_ids()
