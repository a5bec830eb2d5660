"""Redis away before it first answered ``wait``, ``logs``, ``status`` (producer.reaching), on fakeredis.

A FakeServer with ``connected = False`` refuses every command (redis.ConnectionError) until
it is set back; the virtual clock (``virtual_time``) makes every backoff instant and exact, and
the outage ends once that much virtual time has passed.
"""

from __future__ import annotations

import asyncio
import threading
import time

import fakeredis
import pytest
import redis
from click.testing import CliRunner

import producer.cli as cli_module
import producer.reaching as reaching
import producer.waiting as waiting_module
import schemas.connections as connections
from producer import AsyncProducer, ExecutionNotFound, ExecutionVanished, Producer
from producer.cli import cli
from schemas import WRITE_OUTCOME_LUA, ExecutionResult, ExecutionStatus, Keys, LogBatch, LogEntry, Outcome

KEYS = Keys("p")


def _ended(r, eid: str) -> None:
    """An execution that has ended: its rq job (by submit), outcome, and a log with its eof."""
    outcome = Outcome.from_result(ExecutionResult(execution_id=eid, status=ExecutionStatus.SUCCEEDED, exit_code=0))
    r.eval(WRITE_OUTCOME_LUA, 1, KEYS.outcome(eid), outcome.model_dump_json(), 60)
    entry = LogEntry(stream="stdout", ts=time.time(), data="hello\n")
    r.xadd(KEYS.log_stream(eid), {"batch": LogBatch(seq=0, entries=[entry]).to_json()})
    r.xadd(KEYS.log_stream(eid), {"batch": LogBatch(seq=1, eof=True).to_json()})


def _request(eid: str) -> dict:
    return {"execution_id": eid, "engine": {"image": "busybox", "cmd": ["echo", "hello"]}}


class Outage:
    """Redis (the FakeServer) away from now until ``seconds`` of virtual time have passed (None: for good)."""

    def __init__(self, server, clock, monkeypatch) -> None:
        self.server, self.clock = server, clock
        self.back_at: float | None = None
        self.lose_data = False  # back without its data (a restart without persistence)
        slept = redis.retry.sleep

        def sleep(seconds: float) -> None:
            slept(seconds)
            if self.back_at is not None and self.clock.monotonic() >= self.back_at and not self.server.connected:
                self.server.connected = True
                if self.lose_data:
                    fakeredis.FakeRedis(server=self.server).flushall()

        monkeypatch.setattr(redis.retry, "sleep", sleep)

    def start(self, seconds: float | None) -> float:
        self.server.connected = False
        self.back_at = None if seconds is None else self.clock.monotonic() + seconds
        return self.clock.monotonic()


@pytest.fixture
def outage(fake_redis, virtual_time, monkeypatch):
    import producer.many as many

    clock = virtual_time(connections, reaching, many)
    return Outage(fake_redis.connection_pool.connection_kwargs["server"], clock, monkeypatch)


def _producer(fake_redis, **options) -> Producer:
    return Producer(connection=fake_redis, queue="q", prefix="p", **options)


READS = {
    "wait": lambda p, eid: p.wait(eid, timeout=120).status.value,
    "status": lambda p, eid: p.status(eid).state.value,
    "logs": lambda p, eid: [e.data for e in p.logs(eid, follow=False)],
    "logs -f": lambda p, eid: [e.data for e in p.logs(eid, follow=True)],
    "wait ID...": lambda p, eid: [o.status.value for o in p.as_completed([eid], timeout=120)],
}
EXPECTED = {"wait": "succeeded", "status": "succeeded", "logs": ["hello\n"], "logs -f": ["hello\n"], "wait ID...": ["succeeded"]}


@pytest.mark.parametrize("read", list(READS))
def test_redis_away_before_the_first_read_is_ridden_out(fake_redis, outage, read):
    """Redis goes away right after the call starts and is back 12 s later (past the client's own
    retry round): the call ends as if nothing happened."""
    with _producer(fake_redis) as p:
        eid = p.submit(_request("r1"))
        _ended(fake_redis, eid)
        began = outage.start(12.0)
        assert READS[read](p, eid) == EXPECTED[read]
    assert outage.clock.monotonic() - began >= 12.0  # it waited for Redis, not read before it was back


@pytest.mark.parametrize("read", list(READS))
def test_redis_that_never_answers_is_said_after_the_budget(fake_redis, outage, read):
    with _producer(fake_redis, redis_retry_seconds=5) as p:
        eid = p.submit(_request("r2"))
        began = outage.start(None)
        with pytest.raises(redis.ConnectionError):
            READS[read](p, eid)
    assert outage.clock.monotonic() - began >= 5.0  # ridden out that long first


def test_a_wait_timeout_shorter_than_the_budget_ends_the_first_reads(fake_redis, outage):
    with _producer(fake_redis, redis_retry_seconds=600) as p:
        eid = p.submit(_request("r3"))
        began = outage.start(None)
        with pytest.raises(redis.ConnectionError):  # Redis never answered: not a TimeoutError of the execution
            p.wait(eid, timeout=2)
    assert 2.0 <= outage.clock.monotonic() - began < 600


def test_async_producer_rides_out_redis_away_before_the_first_read(fake_redis):
    server = fake_redis.connection_pool.connection_kwargs["server"]
    with _producer(fake_redis) as p:
        eid = p.submit(_request("r4"))
        _ended(fake_redis, eid)

    async def reads() -> tuple:
        async with AsyncProducer(connection=fakeredis.FakeAsyncRedis(server=server), queue="q", prefix="p") as ap:
            server.connected = False
            threading.Timer(1.0, lambda: setattr(server, "connected", True)).start()
            status = (await ap.status(eid)).state.value
            server.connected = False
            threading.Timer(1.0, lambda: setattr(server, "connected", True)).start()
            logs = [e.data async for e in ap.logs(eid, follow=True)]
            server.connected = False
            threading.Timer(1.0, lambda: setattr(server, "connected", True)).start()
            waited = (await ap.wait(eid, timeout=60)).status.value
            return status, logs, waited

    assert asyncio.run(reads()) == ("succeeded", ["hello\n"], "succeeded")


def test_async_producer_says_a_redis_that_never_answers_after_the_budget(fake_redis):
    server = fake_redis.connection_pool.connection_kwargs["server"]

    async def status() -> None:
        client = fakeredis.FakeAsyncRedis(server=server)
        async with AsyncProducer(connection=client, queue="q", prefix="p", redis_retry_seconds=0.5) as ap:
            server.connected = False
            await ap.status("r5")

    with pytest.raises(redis.ConnectionError):
        asyncio.run(status())


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_producer(fake_redis, monkeypatch):
    """The CLI's producers on ``fake_redis`` (prefix ``p``), with the CLI's --redis-retry."""

    def make(url, *, queue, prefix, retention_seconds, **options):
        return Producer(connection=fake_redis, queue=queue, prefix="p", retention_seconds=retention_seconds, **options)

    monkeypatch.setattr(cli_module, "Producer", make)
    return fake_redis


@pytest.mark.parametrize("args", [["wait", "x1"], ["wait", "x1", "x2"], ["logs", "-f", "x1"], ["status", "x1"]])
def test_cli_redis_unreachable_past_the_budget_exits_69_in_one_line(cli_producer, outage, args):
    outage.start(None)
    result = CliRunner().invoke(cli, ["--redis-retry", "3", *args], catch_exceptions=False)
    assert result.exit_code == 69
    assert result.stderr.startswith("dockrq: cannot reach Redis at redis://127.0.0.1:6379/0: ")
    assert result.stderr.count("\n") == 1
    json_result = CliRunner().invoke(cli, ["--json", "--redis-retry", "0", *args], catch_exceptions=False)
    assert json_result.exit_code == 69 and '"exit_code": 69' in json_result.stdout


def test_cli_redis_retry_option_refuses_what_is_not_seconds():
    result = CliRunner().invoke(cli, ["--redis-retry", "-1", "status", "x1"])
    assert result.exit_code == 125 and "--redis-retry" in result.stderr


def test_cli_vanished_execution_exits_as_an_unknown_id_of_each_command(cli_producer, monkeypatch):
    """``wait`` exits 125 and ``logs -f`` 1, each its own code for an id Redis does not know,
    with the same one line saying it vanished."""
    monkeypatch.setattr(waiting_module, "VANISH_GRACE_SECONDS", 0.2)
    fake_redis = cli_producer
    with _producer(fake_redis) as p:
        for eid in ("v1", "v2"):
            p.submit(_request(eid))
    entry = LogEntry(stream="stdout", ts=time.time(), data="partial\n")
    fake_redis.xadd(KEYS.log_stream("v2"), {"batch": LogBatch(seq=0, entries=[entry]).to_json()})
    threading.Timer(0.3, lambda: fake_redis.delete("rq:job:v1", "rq:job:v2")).start()
    waited = CliRunner().invoke(cli, ["wait", "--timeout", "20", "v1"], catch_exceptions=False)
    followed = CliRunner().invoke(cli, ["logs", "-f", "v2"], catch_exceptions=False)
    vanished = str(ExecutionVanished("v"))[: len("execution vanished")]
    assert (waited.exit_code, followed.exit_code) == (125, 1)
    for result in (waited, followed):
        assert result.stderr.startswith(f"dockrq: {vanished}") and result.stderr.count("\n") == 1
    assert followed.stdout == "partial\n"


# -- Redis back without its data (restarted without persistence) --------------------------------

LOST_READS = {
    "wait": lambda p, eid: p.wait(eid, timeout=120),
    "status": lambda p, eid: p.status(eid),
    "logs -f": lambda p, eid: list(p.logs(eid, follow=True)),
    "wait ID...": lambda p, eid: list(p.as_completed([eid], timeout=120)),
}


@pytest.mark.parametrize("read", list(LOST_READS))
def test_an_id_redis_lost_in_the_outage_the_first_reads_rode_out_is_said_vanished(fake_redis, outage, read):
    """Accepted, then Redis restarts without its data while the call rides the outage out:
    not "no such execution" but ExecutionVanished saying Redis may have lost it."""
    with _producer(fake_redis) as p:
        eid = p.submit(_request("l1"))
        outage.lose_data = True
        outage.start(12.0)
        with pytest.raises(ExecutionVanished) as raised:
            LOST_READS[read](p, eid)
    assert raised.value.after_outage and raised.value.execution_id == eid
    assert "Redis was unreachable when this call started and may have lost its data" in str(raised.value)


@pytest.mark.parametrize("read", list(LOST_READS))
def test_an_unknown_id_with_redis_answering_at_once_is_still_no_such_execution(fake_redis, outage, read):
    with _producer(fake_redis) as p:
        with pytest.raises(ExecutionNotFound) as raised:
            LOST_READS[read](p, "l2")
    assert type(raised.value) is ExecutionNotFound and str(raised.value) == "no such execution: l2"


def test_a_command_retry_round_that_rode_an_outage_out_is_noticed():
    """The client's own retry round (about 4 s) may hide the outage from the first reads: it is noted too."""
    from schemas.outages_noticed import noticing_outages

    tries = iter([redis.ConnectionError("away"), None])

    def do() -> str:
        exc = next(tries)
        if exc is not None:
            raise exc
        return "answer"

    with noticing_outages() as noticed:
        assert connections.command_retry().call_with_retry(do, lambda _exc: None) == "answer"
    assert noticed.seen
    with noticing_outages() as quiet:
        assert connections.command_retry().call_with_retry(lambda: "answer", lambda _exc: None) == "answer"
    assert not quiet.seen


def test_async_producer_says_an_id_lost_in_the_outage_vanished(fake_redis):
    server = fake_redis.connection_pool.connection_kwargs["server"]
    with _producer(fake_redis) as p:
        eid = p.submit(_request("l3"))

    def back_without_data() -> None:
        server.connected = True
        fake_redis.flushall()

    async def read(call) -> BaseException:
        async with AsyncProducer(connection=fakeredis.FakeAsyncRedis(server=server), queue="q", prefix="p") as ap:
            server.connected = False
            threading.Timer(1.0, back_without_data).start()
            try:
                await call(ap)
            except ExecutionNotFound as exc:
                return exc
            raise AssertionError("no error")

    async def logs(ap) -> None:
        async for _ in ap.logs(eid, follow=True):
            pass

    for call in (lambda ap: ap.wait(eid, timeout=60), lambda ap: ap.status(eid), logs):
        if not fake_redis.exists(f"rq:job:{eid}"):  # accepted again after the last read's loss
            with _producer(fake_redis) as p:
                p.submit(_request(eid))
        raised = asyncio.run(read(call))
        assert isinstance(raised, ExecutionVanished) and raised.after_outage, raised


@pytest.mark.parametrize("args,code", [(["wait", "l4"], 125), (["logs", "-f", "l4"], 1), (["status", "l4"], 1)])
def test_cli_says_an_id_lost_in_the_outage_may_have_been_lost_with_redis_data(cli_producer, outage, args, code):
    with _producer(cli_producer) as p:
        p.submit(_request("l4"))
    outage.lose_data = True
    outage.start(12.0)
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == code
    assert result.stderr.startswith("dockrq: no such execution now, but Redis was unreachable when this call started")
    assert result.stderr.rstrip().endswith(": l4") and result.stderr.count("\n") == 1
