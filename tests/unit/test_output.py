"""OutputLog and LogStream: capped per-stream capture, incremental UTF-8, tail/follow readers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from schemas import LogEntry
from worker.executor.output import OutputLog, LogStream

JOIN_TIMEOUT = 10.0


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # pragma: no cover - reported by the asserting test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def finish(thread: threading.Thread, box: dict[str, Any], timeout: float = JOIN_TIMEOUT) -> Any:
    thread.join(timeout)
    assert not thread.is_alive(), "reader did not end"
    if "error" in box:
        raise box["error"]
    return box["value"]


def drain(stream: LogStream, timeout: float = JOIN_TIMEOUT) -> list[LogEntry]:
    """Iterate a stream to its end in a thread, so a reader that never ends fails instead of hanging."""
    return finish(*run_in_thread(lambda: list(stream)), timeout=timeout)


def datas(entries: list[LogEntry], stream: str | None = None) -> list[str]:
    return [e.data for e in entries if stream is None or e.stream == stream]


def snapshot(log: OutputLog) -> list[LogEntry]:
    return drain(LogStream(log, tail=True, follow=False))


def wait_until(predicate: Callable[[], bool], timeout: float = JOIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# -- streams and lines ----------------------------------------------------------------


def test_stdout_and_stderr_kept_apart():
    log = OutputLog(1024)
    log.append("stdout", b"out 1\n")
    log.append("stderr", b"err 1\n")
    log.append("stdout", b"out 2\n")
    log.append("stderr", b"err 2\n")
    assert log.text("stdout") == "out 1\nout 2\n"
    assert log.text("stderr") == "err 1\nerr 2\n"
    entries = snapshot(log)
    assert [(e.stream, e.data) for e in entries] == [
        ("stdout", "out 1\n"),
        ("stderr", "err 1\n"),
        ("stdout", "out 2\n"),
        ("stderr", "err 2\n"),
    ]
    assert all(isinstance(e.ts, float) and e.ts > 0 for e in entries)


def test_unknown_stream_refused():
    with pytest.raises(KeyError):
        OutputLog(10).append("stdin", b"x")


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a\nb\nc"],
        [b"one\n", b"two\nthr", b"ee\nfour"],
        [b"progress 10%", b" 20%", b" 30%\n"],
        [b"x\n"],
        [b"\n\n\n"],
        [b"no newline at all"],
    ],
)
def test_entries_end_at_newlines_except_an_unfinished_tail(chunks):
    log = OutputLog(1024)
    for chunk in chunks:
        before = len(log)
        log.append("stdout", chunk)
        new = datas(snapshot(log)[before:])
        text = chunk.decode()
        # What one append publishes: its complete lines, then its unfinished tail on its own.
        assert "".join(new) == text
        assert all(d for d in new), "no empty entries"
        tail = text[text.rfind("\n") + 1 :]
        if tail:
            assert new[-1] == tail
            new = new[:-1]
        assert all(d.endswith("\n") for d in new)
    assert log.text("stdout") == b"".join(chunks).decode()


def test_unfinished_tail_visible_before_its_newline():
    log = OutputLog(1024)
    log.append("stdout", b"line\npartial")
    assert datas(snapshot(log))[-1] == "partial"
    log.append("stdout", b" rest\n")
    got = datas(snapshot(log))
    assert got[-1] == " rest\n"
    assert "".join(got) == "line\npartial rest\n"


# -- cap -------------------------------------------------------------------------------


def test_cap_keeps_exactly_limit_bytes_and_flags_truncation():
    log = OutputLog(10)
    log.append("stdout", b"0123456789abcdefghijklmno")  # 25 bytes
    assert log.text("stdout") == "0123456789"
    assert log.truncated("stdout") is True
    assert log.truncated("stderr") is False
    count = len(log)
    log.append("stdout", b"more\n")
    assert log.text("stdout") == "0123456789"
    assert len(log) == count
    # The other stream has its own budget.
    log.append("stderr", b"err line\n")
    assert log.text("stderr") == "err line\n"
    assert log.truncated("stderr") is False


def test_cap_across_several_appends():
    log = OutputLog(10)
    log.append("stderr", b"abcdef")
    log.append("stderr", b"ghijkl")
    assert log.text("stderr") == "abcdefghij"
    assert log.truncated("stderr") is True


def test_exactly_at_limit_is_not_truncated_until_more_arrives():
    log = OutputLog(10)
    log.append("stdout", b"0123456789")
    assert log.text("stdout") == "0123456789"
    assert log.truncated("stdout") is False
    log.append("stdout", b"")
    assert log.truncated("stdout") is False
    log.append("stdout", b"x")
    assert log.truncated("stdout") is True
    assert log.text("stdout") == "0123456789"


def test_limit_zero_keeps_nothing():
    log = OutputLog(0)
    log.append("stdout", b"hello\n")
    assert log.text("stdout") == ""
    assert len(log) == 0
    assert log.truncated("stdout") is True


def test_memory_stays_flat_under_a_flood():
    log = OutputLog(1000)
    chunk = b"y" * 999 + b"\n"
    for _ in range(2000):  # 2 MB offered
        log.append("stdout", chunk)
    assert len(log.text("stdout").encode()) == 1000
    assert len(log) == 1


# -- UTF-8 -------------------------------------------------------------------------------

_MIXED = "aé€😀z\n".encode()


@pytest.mark.parametrize("cut", range(1, len(_MIXED)))
def test_multibyte_char_split_across_appends_decodes_whole(cut):
    log = OutputLog(1024)
    log.append("stdout", _MIXED[:cut])
    log.append("stdout", _MIXED[cut:])
    assert log.text("stdout") == "aé€😀z\n"
    assert "\ufffd" not in "".join(datas(snapshot(log)))


def test_four_byte_char_fed_one_byte_at_a_time():
    log = OutputLog(1024)
    for byte in "😀\n".encode():
        log.append("stdout", bytes([byte]))
    assert log.text("stdout") == "😀\n"
    assert "\ufffd" not in "".join(datas(snapshot(log)))


def test_split_char_on_one_stream_does_not_disturb_the_other():
    log = OutputLog(1024)
    euro = "€".encode()
    log.append("stdout", euro[:1])
    log.append("stderr", euro[:2])
    log.append("stdout", euro[1:] + b"\n")
    log.append("stderr", euro[2:] + b"\n")
    assert log.text("stdout") == "€\n"
    assert log.text("stderr") == "€\n"


def test_invalid_utf8_replaced_and_following_text_survives():
    log = OutputLog(1024)
    log.append("stdout", b"\xff\xfe")
    log.append("stdout", b"still here\n")
    assert log.text("stdout") == "\ufffd\ufffdstill here\n"
    log.append("stderr", b"a\xc3(b\n")  # a lead byte followed by a non-continuation
    assert log.text("stderr") == "a\ufffd(b\n"


def test_nul_bytes_kept():
    log = OutputLog(1024)
    log.append("stdout", b"a\x00b\x00\n")
    assert log.text("stdout") == "a\x00b\x00\n"


def test_close_flushes_a_half_character():
    log = OutputLog(1024)
    log.append("stdout", b"abc" + "€".encode()[:2])
    assert log.text("stdout") == "abc"
    log.close()
    assert log.closed is True
    assert log.text("stdout") == "abc\ufffd"
    assert datas(snapshot(log)) == ["abc", "\ufffd"]


def test_close_twice_is_harmless():
    log = OutputLog(1024)
    log.append("stdout", b"x\n")
    log.close()
    log.close()
    assert datas(snapshot(log)) == ["x\n"]


# -- readers ------------------------------------------------------------------------------


def test_close_wakes_a_blocked_follower():
    log = OutputLog(1024)
    stream = LogStream(log, tail=True, follow=True)
    seen: list[str] = []

    def follow() -> None:
        for entry in stream:
            seen.append(entry.data)

    thread, box = run_in_thread(follow)
    log.append("stdout", b"first\n")
    wait_until(lambda: seen == ["first\n"])
    time.sleep(0.05)
    assert thread.is_alive(), "a follower must wait for more output until close"
    log.append("stderr", b"second\n")
    wait_until(lambda: len(seen) == 2)
    log.close()
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "close() must end a blocked follower"
    assert "error" not in box
    assert seen == ["first\n", "second\n"]


def test_close_wakes_a_blocked_read_batch():
    log = OutputLog(1024)
    stream = LogStream(log, tail=False, follow=True)
    thread, box = run_in_thread(lambda: stream.read_batch(timeout=None))
    time.sleep(0.05)
    assert thread.is_alive()
    log.close()
    assert finish(thread, box) is None


def test_tail_without_follow_yields_only_what_existed():
    log = OutputLog(1024)
    log.append("stdout", b"a\n")
    log.append("stderr", b"b\n")
    stream = LogStream(log, tail=True, follow=False)
    log.append("stdout", b"later\n")
    # Not closed, and still ends (does not wait for 'later' or for close).
    assert datas(drain(stream)) == ["a\n", "b\n"]


def test_tail_without_follow_on_empty_log_ends_at_once():
    assert drain(LogStream(OutputLog(1024), tail=True, follow=False), timeout=2) == []


def test_follow_without_tail_yields_only_later_entries():
    log = OutputLog(1024)
    log.append("stdout", b"old\n")
    stream = LogStream(log, tail=False, follow=True)
    log.append("stdout", b"new 1\n")
    log.append("stderr", b"new 2\n")
    log.close()
    assert [(e.stream, e.data) for e in drain(stream)] == [("stdout", "new 1\n"), ("stderr", "new 2\n")]


def test_neither_tail_nor_follow_is_empty():
    log = OutputLog(1024)
    log.append("stdout", b"x\n")
    stream = LogStream(log, tail=False, follow=False)
    log.append("stdout", b"y\n")
    assert drain(stream, timeout=2) == []


def test_read_batch_timeout_max_entries_and_end():
    log = OutputLog(1024)
    stream = LogStream(log, tail=True, follow=True)
    started = time.monotonic()
    assert stream.read_batch(timeout=0.05) == []
    assert time.monotonic() - started >= 0.04
    for i in range(5):
        log.append("stdout", f"{i}\n".encode())
    assert datas(stream.read_batch(max_entries=2, timeout=0)) == ["0\n", "1\n"]
    assert datas(stream.read_batch(max_entries=2, timeout=0)) == ["2\n", "3\n"]
    assert datas(stream.read_batch(max_entries=2, timeout=0)) == ["4\n"]
    assert stream.read_batch(timeout=0.02) == []
    log.append("stderr", b"last\n")
    log.close()
    # Entries still unread after close come first, then the end.
    batch = stream.read_batch(timeout=1)
    assert [(e.stream, e.data) for e in batch] == [("stderr", "last\n")]
    assert stream.read_batch(timeout=1) is None
    assert stream.read_batch(timeout=1) is None


def test_read_batch_returns_as_soon_as_an_entry_arrives():
    log = OutputLog(1024)
    stream = LogStream(log, tail=False, follow=True)
    # The read's own timeout is an hour: it can only end within the join's minute because the
    # entry woke it, not because the timeout ran out.
    reader, box = run_in_thread(lambda: stream.read_batch(timeout=3600))
    threading.Timer(0.05, log.append, args=("stdout", b"wake\n")).start()
    assert datas(finish(reader, box, timeout=60)) == ["wake\n"]


def test_read_batch_without_follow_respects_max_entries_and_ends():
    log = OutputLog(1024)
    for i in range(5):
        log.append("stdout", f"{i}\n".encode())
    stream = LogStream(log, tail=True, follow=False)
    log.append("stdout", b"not mine\n")
    assert datas(stream.read_batch(max_entries=3)) == ["0\n", "1\n", "2\n"]
    assert datas(stream.read_batch(max_entries=3)) == ["3\n", "4\n"]
    assert stream.read_batch(max_entries=3) is None


def test_concurrent_followers_all_see_the_full_sequence_in_order():
    total = 10_000
    log = OutputLog(10 * 1024 * 1024)
    expected = [("stdout" if i % 3 else "stderr", f"line {i}\n") for i in range(total)]

    def follow(stream: LogStream) -> list[tuple[str, str]]:
        return [(e.stream, e.data) for e in stream]

    early = [run_in_thread(lambda s=LogStream(log, tail=True, follow=True): follow(s)) for _ in range(4)]
    half_written = threading.Event()

    def write() -> None:
        for i, (stream, data) in enumerate(expected):
            log.append(stream, data.encode())
            if i == total // 2:
                half_written.set()
        log.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert half_written.wait(JOIN_TIMEOUT)
    # A reader joining mid-flight with tail sees everything too.
    late = run_in_thread(lambda s=LogStream(log, tail=True, follow=True): follow(s))
    writer.join(JOIN_TIMEOUT)
    assert not writer.is_alive()
    for thread, box in [*early, late]:
        assert finish(thread, box) == expected
    assert len(log) == total
