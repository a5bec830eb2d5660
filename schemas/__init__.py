"""The wire contract of dockrq: pydantic models and Redis key names. No I/O here.

Each public name is imported from its module on first use (PEP 562, as ``producer``
does): a process needing one small module (the ``dockrq`` CLI's defaults and id
patterns, ``schemas.defaults``) does not build every model of the package."""

from typing import TYPE_CHECKING

from .lazy import lazy_exports

# Where each public name lives.
_HOME = {
    "MAX_STDIN_BYTES": ".defaults", "TmpfsMount": ".container", "Ulimit": ".container",
    "compact_payload": ".container",
    "CONCURRENCY_KEY_PATTERN": ".scheduling", "DEFAULT_RETRY_ON": ".scheduling", "MAX_RETRIES": ".scheduling",
    "DEFAULT_OUTPUT_LIMIT": ".execution", "EXECUTION_ID_PATTERN": ".defaults", "EngineSpec": ".execution",
    "ExecutionRequest": ".execution", "ExecutionResult": ".execution", "ExecutionState": ".states",
    "ExecutionStatus": ".states", "GpuRequest": ".execution", "LogEntry": ".execution",
    "LogStreamRequest": ".execution", "Mount": ".execution", "Resources": ".execution",
    "format_size": ".execution", "new_execution_id": ".execution", "parse_size": ".execution",
    "ARCHIVE_CHUNK_BYTES": ".files", "DEFAULT_MAX_INPUT_BYTES": ".defaults", "DEFAULT_OUTPUT_FILES_LIMIT": ".files",
    "MAX_INPUT_ENTRIES": ".files", "MAX_OUTPUT_ENTRIES": ".files", "ChunkReader": ".files", "InputsSpec": ".files",
    "OutputFile": ".files", "OutputSkipped": ".files", "archive_bound": ".files", "check_container_path": ".files",
    "drop_default_file_fields": ".files", "entry_name": ".files",
    "CANCEL_MESSAGE": ".wire", "DEFAULT_MAX_REQUEST_BYTES": ".wire", "DEFAULT_PREFIX": ".defaults",
    "DEFAULT_QUEUE": ".defaults", "DEFAULT_RETENTION_SECONDS": ".defaults", "JOB_FRAMING_BYTES": ".wire",
    "JOB_FUNCTION": ".wire", "LOG_STREAM_FIELD": ".wire", "MIN_MAX_REQUEST_BYTES": ".wire",
    "WRITE_OUTCOME_LUA": ".wire", "AttemptRecord": ".wire", "Event": ".wire", "Keys": ".wire", "LogBatch": ".wire",
    "Outcome": ".wire", "OutcomeError": ".wire", "META_ATTEMPTS": ".wire", "META_PREVIOUS_ATTEMPTS": ".wire",
    "PullReport": ".wire", "as_json_object": ".wire", "attempts_from_meta": ".wire",
    "describe_validation_error": ".wire", "request_size": ".wire",
}

if TYPE_CHECKING:
    from .container import MAX_STDIN_BYTES, TmpfsMount, Ulimit, compact_payload

    from .scheduling import CONCURRENCY_KEY_PATTERN, DEFAULT_RETRY_ON, MAX_RETRIES

    from .execution import (
        DEFAULT_OUTPUT_LIMIT,
        EXECUTION_ID_PATTERN,
        EngineSpec,
        ExecutionRequest,
        ExecutionResult,
        ExecutionState,
        ExecutionStatus,
        GpuRequest,
        LogEntry,
        LogStreamRequest,
        Mount,
        Resources,
        format_size,
        new_execution_id,
        parse_size,
    )
    from .files import (
        ARCHIVE_CHUNK_BYTES,
        DEFAULT_MAX_INPUT_BYTES,
        DEFAULT_OUTPUT_FILES_LIMIT,
        MAX_INPUT_ENTRIES,
        MAX_OUTPUT_ENTRIES,
        ChunkReader,
        InputsSpec,
        OutputFile,
        OutputSkipped,
        archive_bound,
        check_container_path,
        drop_default_file_fields,
        entry_name,
    )
    from .wire import (
        CANCEL_MESSAGE,
        DEFAULT_MAX_REQUEST_BYTES,
        DEFAULT_PREFIX,
        DEFAULT_QUEUE,
        DEFAULT_RETENTION_SECONDS,
        JOB_FRAMING_BYTES,
        JOB_FUNCTION,
        LOG_STREAM_FIELD,
        MIN_MAX_REQUEST_BYTES,
        WRITE_OUTCOME_LUA,
        AttemptRecord,
        Event,
        Keys,
        LogBatch,
        Outcome,
        OutcomeError,
        META_ATTEMPTS,
        META_PREVIOUS_ATTEMPTS,
        PullReport,
        as_json_object,
        attempts_from_meta,
        describe_validation_error,
        request_size,
    )


__all__ = [
    "AttemptRecord",
    "CONCURRENCY_KEY_PATTERN",
    "DEFAULT_RETRY_ON",
    "MAX_RETRIES",
    "ARCHIVE_CHUNK_BYTES",
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_OUTPUT_FILES_LIMIT",
    "MAX_INPUT_ENTRIES",
    "MAX_OUTPUT_ENTRIES",
    "ChunkReader",
    "InputsSpec",
    "OutputFile",
    "OutputSkipped",
    "archive_bound",
    "check_container_path",
    "drop_default_file_fields",
    "entry_name",
    "CANCEL_MESSAGE",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_PREFIX",
    "DEFAULT_QUEUE",
    "DEFAULT_RETENTION_SECONDS",
    "WRITE_OUTCOME_LUA",
    "EXECUTION_ID_PATTERN",
    "JOB_FRAMING_BYTES",
    "JOB_FUNCTION",
    "LOG_STREAM_FIELD",
    "MAX_STDIN_BYTES",
    "MIN_MAX_REQUEST_BYTES",
    "EngineSpec",
    "Event",
    "ExecutionRequest",
    "ExecutionResult",
    "ExecutionState",
    "ExecutionStatus",
    "GpuRequest",
    "Keys",
    "LogBatch",
    "LogEntry",
    "LogStreamRequest",
    "Mount",
    "Outcome",
    "OutcomeError",
    "PullReport",
    "Resources",
    "META_ATTEMPTS",
    "META_PREVIOUS_ATTEMPTS",
    "TmpfsMount",
    "Ulimit",
    "as_json_object",
    "attempts_from_meta",
    "compact_payload",
    "describe_validation_error",
    "format_size",
    "new_execution_id",
    "parse_size",
    "request_size",
]

__getattr__, __dir__ = lazy_exports(globals(), _HOME)
