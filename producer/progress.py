"""What an attached ``dockrq submit`` shows on stderr before the container's output starts.

Two waits are otherwise silent: for a worker to take the execution (a busy
queue, or one no worker serves) and for the image pull. :class:`SubmitProgress`
listens on ``P:events`` (subscribed *before* the submit, so no event of the
execution is missed) and shows:

* what it waits for once it has been waiting ``WAITING_NOTICE_SECONDS`` with no
  worker's event (``producer.waiting_for``): ``waiting for a worker on queue Q``,
  ``waiting for dependency A to succeed (--depends-on)``, a concurrency slot, or the
  scheduled time; read again every ``WAITING_RECHECK_SECONDS`` and shown anew when it
  changes (a dependency succeeded: now it waits for a worker);
* the pull's progress (``schemas.PullReport``: bytes, layers): a rich progress
  bar on a terminal, one plain line when stderr is not one (written when the
  pull ends, so a log file gets a single line).

Everything goes to stderr: stdout stays the container's output (or the JSON of
``--json``). ``close()`` ends the display before the first line of output.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

import redis
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from schemas import Event, ExecutionState, Keys, PullReport, new_execution_id
from schemas.connections import REDIS_DOWN

from .waiting_for import waiting_for

# An execution still waiting for a worker this long (seconds) gets the notice.
WAITING_NOTICE_SECONDS = 1.0
# Then what it waits for is read again this often (seconds) until a worker takes it.
WAITING_RECHECK_SECONDS = 1.0


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class SubmitProgress:
    """Shows one attached execution's wait for a worker and its image pull on ``stream``.

    ``connection``: a Redis client (pub/sub); ``tty``: force the terminal/plain form
    (default: whether ``stream`` is a terminal). Use ``start()`` before the submit and
    ``close()`` before writing the container's output; both are idempotent.
    """

    def __init__(
        self, connection: redis.Redis, keys: Keys, execution_id: str, queue: str, *,
        stream: IO[str] | None = None, tty: bool | None = None, waiting_after: float | None = None,
    ) -> None:
        self.execution_id = execution_id
        self.queue = queue
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._waiting_after = WAITING_NOTICE_SECONDS if waiting_after is None else waiting_after
        self._connection = connection
        self._keys = keys
        self._pubsub = connection.pubsub(ignore_subscribe_messages=True)
        self._channel = keys.events
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._taken = False  # a worker's event was seen
        self._waiting_shown: str | None = None  # the notice shown, if any
        self._waiting_read = 0.0  # when it was last read (monotonic)
        self._pull: PullReport | None = None
        self._pull_began: float | None = None
        self._pull_reported = False
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def start(self) -> SubmitProgress:
        """Subscribe (before the submit) and start watching; a Redis refusal just means no display.
        Redis away (:data:`REDIS_DOWN`, after the client's own retries) is raised: the submit would
        only wait out the same outage again before saying so."""
        try:
            self._pubsub.subscribe(self._channel)
        except REDIS_DOWN:
            self._pubsub.close()
            raise
        except redis.RedisError:
            self._closed.set()
            return self
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="dockrq-submit-progress", daemon=True)
        self._thread.start()
        return self

    @classmethod
    def before_submit(cls, producer: Any, request: dict[str, Any], queue: str | None) -> SubmitProgress:
        """Started for ``request`` (a request document) about to be submitted by ``producer`` on
        ``queue`` (None: the producer's): gives the request its execution id now (unless it has
        one), so the display listens before the submit and misses no event."""
        request.setdefault("execution_id", new_execution_id())
        return cls(producer.connection, producer.keys, request["execution_id"], queue or producer.queue).start()

    def __enter__(self) -> SubmitProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the display: a pull shown in part gets its line; nothing is shown afterwards."""
        if self._closed.is_set() and self._thread is None:
            return
        self._closed.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)
        with self._lock:
            self._end_pull()
            self._stop_bar()
        try:
            self._pubsub.close()
        except (redis.RedisError, OSError):
            pass

    # -- the watcher thread ---------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.1)
            except (redis.RedisError, OSError, ValueError):
                return  # no display beats a broken one; the submit itself goes on
            if message is not None:
                self._on_message(message.get("data"))
            if self._taken or time.monotonic() - self._began < self._waiting_after:
                continue
            if self._waiting_shown is not None and time.monotonic() - self._waiting_read < WAITING_RECHECK_SECONDS:
                continue
            text = self._what_it_waits_for()
            with self._lock:
                if self._closed.is_set():
                    return
                if not self._taken and text != self._waiting_shown:
                    self._show_waiting(text)

    def _what_it_waits_for(self) -> str:
        """``producer.waiting_for``'s line (read outside the lock); a worker when Redis cannot tell."""
        self._waiting_read = time.monotonic()
        try:
            return waiting_for(self._connection, self._keys, self.execution_id, self.queue)
        except (redis.RedisError, OSError, ValueError):
            return f"waiting for a worker on queue {self.queue}"

    def _on_message(self, data: Any) -> None:
        try:
            event = Event.model_validate_json(data)
        except (ValidationError, ValueError, TypeError):
            return
        if event.execution_id != self.execution_id:
            return
        with self._lock:
            if self._closed.is_set():
                return
            if event.status in (ExecutionState.QUEUED, ExecutionState.SCHEDULED):
                return
            self._taken = True
            if event.status == ExecutionState.PULLING and event.progress is not None:
                self._show_pull(event.progress)
            elif event.status != ExecutionState.PULLING:
                self._end_pull()
                self._stop_bar()

    # -- display (lock held) -------------------------------------------------------

    def _show_waiting(self, text: str) -> None:
        self._waiting_shown = text
        if self._tty:
            bar = self._ensure_bar()
            if self._task is None:
                self._task = bar.add_task(text, total=None)
            else:
                bar.update(self._task, description=text)
        else:
            self._stream.write(f"dockrq: {text}\n")
            self._stream.flush()

    def _show_pull(self, report: PullReport) -> None:
        if self._pull_began is None:
            self._pull_began = time.monotonic()
        self._pull = report
        if self._tty:
            bar = self._ensure_bar()
            description = f"pulling {report.image} ({report.layers_done}/{report.layers_total} layers)"
            if self._task is None:
                self._task = bar.add_task(description, total=report.bytes_total or None)
            bar.update(self._task, description=description, completed=report.bytes_done,
                       total=report.bytes_total or None)
        if report.done:
            self._end_pull()

    def _end_pull(self) -> None:
        report = self._pull
        if report is None or self._pull_reported:
            return
        self._pull_reported = True
        seconds = time.monotonic() - (self._pull_began or time.monotonic())
        if report.done:
            line = (f"dockrq: pulled {report.image}: {_megabytes(report.bytes_done)} in "
                    f"{report.layers_total} layers, {seconds:.1f}s")
        else:
            line = (f"dockrq: pulling {report.image} stopped at {_megabytes(report.bytes_done)} of "
                    f"{_megabytes(report.bytes_total)}, {report.layers_done}/{report.layers_total} layers")
        self._stop_bar()
        self._stream.write(line + "\n")
        self._stream.flush()

    def _ensure_bar(self) -> Progress:
        if self._bar is None:
            self._bar = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TimeElapsedColumn(), console=Console(file=self._stream), transient=True,
            )
            self._bar.start()
        return self._bar

    def _stop_bar(self) -> None:
        bar, self._bar = self._bar, None
        self._task = None
        if bar is not None:
            bar.stop()
