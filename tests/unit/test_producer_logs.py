"""Log following against fakeredis: history then live, no gap, no duplicate, always ends.

A small writer plays the worker's part of the contract: every batch is XADDed
to ``P:exec:ID:log`` (field ``batch``) and published on ``P:exec:ID:logs``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from producer import ExecutionNotFound, Producer
from producer.logs import LogCursor
from schemas import ExecutionStatus, Keys, LogBatch, LogEntry, Outcome

KEYS = Keys("p")


@pytest.fixture
def producer(fake_redis):
    with Producer(connection=fake_redis, queue="q", prefix="p") as p:
        yield p


class Writer:
    """The worker side of one execution's log, with knobs to lose or repeat messages."""

    def __init__(self, r: redis.Redis, execution_id: str) -> None:
        self.r = r
        self.execution_id = execution_id
        self.seq = 0
        self.sent: list[LogBatch] = []

    def batch(self, *data: str, stream: str = "stdout", xadd: bool = True, publish: bool = True) -> LogBatch:
        entries = [LogEntry(stream=stream, ts=time.time(), data=d) for d in data]
        batch = LogBatch(seq=self.seq, entries=entries)
        self.seq += len(entries)
        self.send(batch, xadd=xadd, publish=publish)
        return batch

    def eof(self, *, xadd: bool = True, publish: bool = True) -> None:
        self.send(LogBatch(seq=self.seq, eof=True), xadd=xadd, publish=publish)

    def send(self, batch: LogBatch, *, xadd: bool = True, publish: bool = True) -> None:
        payload = batch.to_json()
        if xadd:
            self.r.xadd(KEYS.log_stream(self.execution_id), {"batch": payload})
        if publish:
            self.r.publish(KEYS.logs_channel(self.execution_id), payload)
        self.sent.append(batch)

    def after_subscribe(self, script: Callable[[], None]) -> threading.Thread:
        """Run ``script`` in a thread once a follower has subscribed, as a running worker would."""

        def run() -> None:
            channel = KEYS.logs_channel(self.execution_id)
            deadline = time.monotonic() + 5
            while self.r.pubsub_numsub(channel)[0][1] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            script()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def _data(entries) -> list[str]:
    return [e.data for e in entries]


def _ended(entries, within: float = 60.0) -> list[str]:
    """The data of ``entries`` read to their end in a thread: a reader that never ends fails the
    test after ``within`` seconds instead of hanging it (the right one ends in about a second)."""
    box: dict = {}

    def read() -> None:
        try:
            box["data"] = _data(entries)
        except BaseException as exc:  # pragma: no cover - re-raised below
            box["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(within)
    assert not reader.is_alive(), "the follower did not end"
    if "error" in box:
        raise box["error"]
    return box["data"]


@pytest.fixture
def running(producer, fake_redis):
    """A submitted execution and its log writer."""
    producer.submit({"execution_id": "ex", "engine": {"image": "busybox"}})
    return Writer(fake_redis, "ex")


def test_history_without_follow(producer, running):
    running.batch("a\n", "b\n")
    running.batch("oops\n", stream="stderr")
    running.batch("c\n")
    entries = list(producer.logs("ex", follow=False))
    assert _data(entries) == ["a\n", "b\n", "oops\n", "c\n"]
    assert [e.stream for e in entries] == ["stdout", "stdout", "stderr", "stdout"]


def test_follow_ends_at_an_eof_already_in_history(producer, running):
    running.batch("a\n")
    running.eof()
    # No outcome and the job still there: nothing but the eof in history can end this follow.
    assert _ended(producer.logs("ex", follow=True)) == ["a\n"]


def test_overlapping_batches_are_deduplicated_by_seq(producer, running):
    running.batch("a", "b")
    running.send(LogBatch.model_validate({"seq": 1, "entries": [{"stream": "stdout", "ts": 0, "data": "b"},
                                                                {"stream": "stdout", "ts": 0, "data": "c"}]}))
    running.seq = 3
    running.eof()
    assert _data(producer.logs("ex")) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [(True, list("0123456789")), (4, list("6789")), (5, list("56789")), (100, list("0123456789")), (0, []),
     (False, [])],
)
def test_tail(producer, running, tail, expected):
    for chunk in ("012", "345", "678", "9"):
        running.batch(*(f"{c}\n" for c in chunk))
    running.eof()
    lines = [f"{c}\n" for c in expected]
    assert _data(producer.logs("ex", tail=tail, follow=False)) == lines
    assert _data(producer.logs("ex", tail=tail, follow=True)) == lines


def test_tail_counts_lines_not_entries(producer, running):
    # `seq 1 10` arrives as one entry: --tail 2 is its last two lines, as docker logs --tail 2
    running.batch("".join(f"{i}\n" for i in range(1, 11)))
    running.eof()
    assert "".join(_data(producer.logs("ex", tail=2, follow=False))) == "9\n10\n"


def test_tail_keeps_a_line_split_over_entries_and_streams_apart(producer, running):
    running.batch("old\nhal")
    running.batch("warn\n", stream="stderr")
    running.batch("f line\nlast unfinished")
    running.eof()
    entries = list(producer.logs("ex", tail=3, follow=False))
    assert [(e.stream, e.data) for e in entries] == [
        ("stdout", "hal"), ("stderr", "warn\n"), ("stdout", "f line\nlast unfinished")
    ]


def test_tail_reads_back_past_a_page_of_batches(producer, running):
    # one long line started in the first of 1200 batches, the rest single-character chunks
    running.batch("first\nlong:")
    for _ in range(1200):
        running.batch("x")
    running.batch("\nend\n")
    running.eof()
    assert "".join(_data(producer.logs("ex", tail=2, follow=False))) == "long:" + "x" * 1200 + "\nend\n"


@given(
    text=st.text(alphabet="ab\n\r", max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    n=st.integers(min_value=0, max_value=12),
)
def test_tail_is_the_last_lines_however_the_output_was_chunked(text, cuts, n):
    from producer.tail import tail_lines

    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    entries = [LogEntry(stream="stdout", ts=0, data=text[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
    lines = text.split("\n")
    whole = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    kept, _ = tail_lines(entries, n)
    assert "".join(e.data for e in kept) == ("".join(whole[-n:]) if n else "")


def test_tail_must_be_a_count(producer, running):
    with pytest.raises(ValueError):
        list(producer.logs("ex", tail=-1))


def test_trimmed_history_starts_where_the_stream_does(producer, running):
    running.batch("lost", xadd=False, publish=False)  # capped away before we came
    running.batch("kept")
    running.eof()
    assert _data(producer.logs("ex")) == ["kept"]


def test_live_follow_gets_history_then_live_exactly_once(producer, running):
    running.batch("h1\n", "h2\n")

    def worker():
        # Published after our subscribe although already in the stream we read: must not repeat.
        running.send(running.sent[0], xadd=False)
        running.batch("l1\n")
        running.batch("l2\n", stream="stderr")
        running.eof()

    running.after_subscribe(worker)
    assert _data(producer.logs("ex")) == ["h1\n", "h2\n", "l1\n", "l2\n"]


def test_a_missed_live_message_is_recovered_from_the_stream(producer, running):
    def worker():
        running.batch("one\n")
        running.batch("two\n", publish=False)  # never reaches us live
        running.batch("three\n")
        running.eof()

    running.after_subscribe(worker)
    assert _data(producer.logs("ex")) == ["one\n", "two\n", "three\n"]


def test_a_gap_the_stream_cannot_fill_is_skipped(producer, running):
    def worker():
        running.batch("one\n")
        running.batch("gone\n", xadd=False, publish=False)
        running.batch("three\n", xadd=False)
        running.eof(xadd=False)

    running.after_subscribe(worker)
    assert _data(producer.logs("ex")) == ["one\n", "three\n"]


def test_follow_stops_when_the_outcome_exists_without_eof(producer, running, fake_redis):
    running.batch("partial\n")
    outcome = Outcome.failure("ex", ExecutionStatus.LOST, "worker_lost", "worker died")
    fake_redis.rpush(KEYS.outcome("ex"), outcome.model_dump_json())
    # No eof will ever come: only noticing the outcome ends this follow.
    assert _ended(producer.logs("ex")) == ["partial\n"]


def test_follow_of_a_job_that_disappears_without_an_outcome_says_it_vanished(producer, running, fake_redis):
    """Its log is not whole: the follower says so (ExecutionVanished), not ends as if it were."""
    from producer import ExecutionVanished

    running.batch("partial\n")
    fake_redis.delete("rq:job:ex")
    got = []
    with pytest.raises(ExecutionVanished):
        for entry in producer.logs("ex"):
            got.append(entry.data)
    assert got == ["partial\n"]


def test_follow_whose_job_is_deleted_after_the_outcome_ends_normally(producer, running, fake_redis):
    """The dashboard's Delete of an ended execution removes the rq job, keeps the outcome."""
    running.batch("done\n")
    fake_redis.rpush(KEYS.outcome("ex"), '{"execution_id": "ex", "status": "succeeded"}')
    fake_redis.delete("rq:job:ex")
    assert _data(producer.logs("ex")) == ["done\n"]


def test_follow_survives_a_dropped_connection(producer, running, monkeypatch):
    real = redis.client.PubSub.get_message
    dropped = []

    def flaky(self, *args, **kwargs):
        message = real(self, *args, **kwargs)
        if message is not None and message["type"] == "message" and not dropped:
            dropped.append(message)
            raise redis.ConnectionError("connection reset")  # the message is lost with it
        return message

    monkeypatch.setattr(redis.client.PubSub, "get_message", flaky)

    def worker():
        running.batch("one\n")
        time.sleep(0.2)
        running.batch("two\n")
        running.eof()

    running.after_subscribe(worker)
    assert _data(producer.logs("ex")) == ["one\n", "two\n"]
    assert dropped


def test_logs_of_an_unknown_execution(producer):
    with pytest.raises(ExecutionNotFound):
        producer.logs("nobody")


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=12),
    repeats=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0)), max_size=12),
)
def test_cursor_yields_every_entry_once_whatever_is_repeated(sizes, repeats):
    """History and live overlap arbitrarily: each entry comes out once, in order."""
    batches, seq = [], 0
    for size in sizes:
        entries = [LogEntry(stream="stdout", ts=0, data=str(seq + i)) for i in range(size)]
        batches.append(LogBatch(seq=seq, entries=entries))
        seq += size
    delivered = list(batches)
    for after, which in repeats:  # re-deliver an already-seen batch at some later point
        position = after % (len(delivered) + 1)
        seen = delivered[:position]
        if seen:
            delivered.insert(position, seen[which % len(seen)])
    cursor = LogCursor()
    out = []
    for batch in delivered:
        fresh = cursor.take(batch, skip_gap=False)
        assert fresh is not None
        out += [e.data for e in fresh]
    assert out == [str(i) for i in range(seq)]
    assert cursor.next_seq == seq


def test_follow_cut_short_by_redis_losing_the_execution_says_so(producer, running, fake_redis):
    """A new user's trial: after a Redis restart without persistence `logs -f` ended with exit 0
    and a log cut short, as if whole."""
    from producer import ExecutionVanished

    running.batch("partial\n")
    follow = producer.logs("ex")
    assert next(follow).data == "partial\n"
    fake_redis.flushall()  # outcome, rq job, claim and stream gone
    with pytest.raises(ExecutionVanished, match="no longer knows"):
        next(follow)
