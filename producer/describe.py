"""A ``docker run``-like line for an execution request.

rq-dashboard shows an rq job's description verbatim, so this is what operators
read there. Environment values are replaced by ``***``: requests routinely carry
tokens and the dashboard must not leak them. Arguments are shell-quoted, so the
line can be pasted into a shell (with the real values filled in).
"""

from __future__ import annotations

import shlex

from schemas import ExecutionRequest, format_size

HIDDEN = "***"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _run_options(request: ExecutionRequest) -> list[str]:
    """The docker run options of schemas/container.py, as docker run spells them."""
    q = shlex.quote
    words = []
    if request.stdin_base64 is not None:
        words.append("-i")
    if request.engine.user is not None:
        words.append(f"-u {q(request.engine.user)}")
    if request.read_only:
        words.append("--read-only")
    for mount in request.tmpfs:
        words.append(f"--tmpfs {q(mount.target + ('' if mount.size is None else ':size=' + format_size(mount.size)))}")
    if request.resources.shm_size is not None:
        words.append(f"--shm-size {format_size(request.resources.shm_size)}")
    words += [f"--cap-add {cap}" for cap in request.cap_add]
    words += [f"--cap-drop {cap}" for cap in request.cap_drop]
    words += [f"--ulimit {u.name}={u.soft}:{u.effective_hard}" for u in request.ulimits]
    if request.init:
        words.append("--init")
    if request.stop_signal is not None:
        words.append(f"--stop-signal {request.stop_signal}")
    if request.stop_timeout is not None:
        words.append(f"--stop-timeout {request.stop_timeout}")
    words += [f"-l {q(f'{key}={value}')}" for key, value in request.labels.items()]
    return words


def describe(request: ExecutionRequest) -> str:
    """``docker run ...`` for ``request``: every option it sets, env values as ``***``, shell-quoted."""
    engine, res = request.engine, request.resources
    q = shlex.quote
    words = ["docker", "run", "--rm"]
    words += [f"-e {q(name)}={HIDDEN}" for name in engine.env]
    if engine.working_dir:
        words.append(f"-w {q(engine.working_dir)}")
    words += _run_options(request)
    # docker's --entrypoint takes one word; the rest of a list entrypoint runs as leading args.
    entrypoint = engine.entrypoint or []
    if entrypoint:
        words.append(f"--entrypoint {q(entrypoint[0])}")
    if res.cpus is not None:
        words.append(f"--cpus {_number(res.cpus)}")
    if res.memory is not None:
        words.append(f"--memory {format_size(res.memory)}")
    if res.pids is not None:
        words.append(f"--pids-limit {res.pids}")
    if res.gpus is not None:
        gpus = "all" if res.gpus.count == -1 else (res.gpus.count or f"device={','.join(res.gpus.device_ids or [])}")
        words.append(f"--gpus {q(str(gpus))}")
    for mount in request.mounts:
        words.append(f"-v {q(f'{mount.source}:{mount.target}' + (':ro' if mount.read_only else ''))}")
    words.append(f"--network {request.network}")
    words.append(q(engine.image))
    words += [q(arg) for arg in [*entrypoint[1:], *(engine.cmd or [])]]
    return " ".join(words)
