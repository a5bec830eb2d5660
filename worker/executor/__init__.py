"""The Docker executor: the Python form of the seed's Go package.

Knows Docker, knows nothing of Redis or rq: usable on its own.

    from worker.executor import new_executor
    ex = new_executor("node-a")
    result = ex.run({"engine": {"image": "busybox", "cmd": ["echo", "hi"]}})
"""

from .errors import (
    DAEMON_ERRORS,
    ContainerCreateError,
    DaemonError,
    DaemonRestarted,
    DockerUnavailableError,
    ExecutionAlreadyFinished,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ExecutionOwnedElsewhere,
    ExecutorError,
    GpuUnavailableError,
    ImagePullError,
    MountNotAllowed,
    RequestRejected,
    StartError,
    StartFailed,
)
from .archive import InputsRejected
from .executor import CleanupError, CleanupReport, DockerExecutor, ExecutionInfo, new_executor
from .files import ExecutionFiles, InputsUnavailable, OutputSink
from .output import LogStream
from .owned import OwnedContainer
from .pull import PresentImage, PullProgress, PullRecord
from .spec import LABEL_CREATED, LABEL_EXECUTION, LABEL_EXECUTOR, LABEL_JOB, ExecutorPolicy

__all__ = [
    "DAEMON_ERRORS",
    "LABEL_CREATED",
    "LABEL_EXECUTION",
    "LABEL_EXECUTOR",
    "LABEL_JOB",
    "CleanupError",
    "CleanupReport",
    "ContainerCreateError",
    "DaemonError",
    "DaemonRestarted",
    "DockerExecutor",
    "DockerUnavailableError",
    "ExecutionAlreadyFinished",
    "ExecutionAlreadyStarted",
    "ExecutionFiles",
    "ExecutionInfo",
    "ExecutionNotFound",
    "ExecutionOwnedElsewhere",
    "ExecutorError",
    "ExecutorPolicy",
    "GpuUnavailableError",
    "ImagePullError",
    "InputsRejected",
    "InputsUnavailable",
    "LogStream",
    "MountNotAllowed",
    "OutputSink",
    "OwnedContainer",
    "PresentImage",
    "PullProgress",
    "PullRecord",
    "RequestRejected",
    "StartError",
    "StartFailed",
    "new_executor",
]
