"""Worker log lines as JSON (``DOCKRQ_LOG_FORMAT=json``), with the execution id on each line.

One JSON object a line, for log collectors (Loki, Fluent Bit, Vector, ...):

    {"ts": "2026-01-02T03:04:05.678+00:00", "level": "INFO", "logger": "worker.execution.run",
     "message": "execution 01J...: failed (exit 3)", "execution_id": "01J...",
     "process": 4242, "thread": "MainThread"}

``execution_id`` is set on every line written about an execution, whichever
thread writes it: the rq job being performed (``execution_context``, entered by
the worker around each job), the execution's own threads (named
``dockrq-<role>-<id>``), or a message that names it (``execution <id>: ...``, the
form every dockrq module uses), or rq's line taking the job. Other lines carry ``"execution_id": null``. An
exception adds ``"exc_info"`` (the traceback as one string).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_ID = r"[A-Za-z0-9_-]{1,64}"
_THREAD_RE = re.compile(rf"^dockrq-(?:logs|exec|out|adopt)-({_ID})$")
_MESSAGE_RE = re.compile(rf"\bexecution ({_ID})\b")
_RQ_DEQUEUED = "Worker %s: %s: %s"  # rq.worker.base, with log_job_description off (DockrqWorker)
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("dockrq_execution_id", default=None)


@contextmanager
def execution_context(execution_id: str | None) -> Iterator[None]:
    """Lines logged by this thread while inside carry ``execution_id``."""
    token = _current.set(execution_id)
    try:
        yield
    finally:
        _current.reset(token)


def execution_id_of(record: logging.LogRecord) -> str | None:
    """The execution a log record is about, or None (see the module docstring for the order)."""
    explicit = record.__dict__.get("execution_id")
    if isinstance(explicit, str) and explicit:
        return explicit
    current = _current.get()
    if current:
        return current
    match = _THREAD_RE.match(record.threadName or "")
    if match:
        return match.group(1)
    if record.msg == _RQ_DEQUEUED and isinstance(record.args, tuple) and len(record.args) == 3:
        return str(record.args[2])  # rq's "Worker NAME: QUEUE: JOB_ID", logged as it takes a job
    match = _MESSAGE_RE.search(record.getMessage())
    return match.group(1) if match else None


class JsonFormatter(logging.Formatter):
    """``logging.Formatter`` writing one JSON object per record (keys in the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "execution_id": execution_id_of(record),
            "process": record.process,
            "thread": record.threadName or threading.current_thread().name,
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``DOCKRQ_LOG_FORMAT`` (``text`` or ``json``); ValueError otherwise."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
