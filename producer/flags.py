"""From ``dockrq submit``'s docker-like flags to an execution request (a plain dict).

``-e K=V``/``-e K``, ``-v SRC:DST[:ro|rw]`` and ``--gpus all|N|device=0,1`` are read
the way ``docker run`` reads them; a malformed one raises ``InvalidRequest`` naming
the request field, before anything is sent.
"""

from __future__ import annotations

import os
from typing import Any

from schemas import parse_size

from .errors import InvalidRequest


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    """``-e K=V`` sets K; ``-e K`` passes K from this environment (skipped if unset), as docker does."""
    env = {}
    for item in values:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def _mounts(values: tuple[str, ...]) -> list[dict[str, Any]]:
    """``-v SRC:DST[:ro|rw]`` as docker writes it; read-only unless ``:rw`` (the schema's default)."""
    mounts = []
    for index, item in enumerate(values):
        parts = item.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise InvalidRequest(f"mounts.{index}: {item!r} is not SRC:DST, SRC:DST:ro or SRC:DST:rw")
        mounts.append({"source": parts[0], "target": parts[1], "read_only": parts[2:] != ["rw"]})
    return mounts


def _gpus(value: str, vendor: str) -> dict[str, Any]:
    """``--gpus`` as docker takes it: ``all``, a count, or ``device=0,1``.

    A count is NVIDIA's only: AMD/Intel GPUs are render nodes the worker cannot pick N of,
    so the schema refuses one; saying so here names the flags to use instead.
    """
    if value == "all":
        return {"vendor": vendor, "count": -1}
    if value.startswith("device="):
        return {"vendor": vendor, "device_ids": [d for d in value[len("device="):].split(",") if d]}
    if value.isascii() and value.isdigit():  # str.isdigit also takes '²', which int() refuses
        if vendor != "nvidia":
            raise InvalidRequest(
                f"resources.gpus: {vendor} GPUs are chosen by render node index, not by count: "
                f"use --gpus device=0,1 or --gpus all"
            )
        return {"vendor": vendor, "count": int(value)}
    raise InvalidRequest(f"resources.gpus: {value!r} is not 'all', a count or 'device=ID,...'")


def build_request(image: str, cmd: tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    """The request as a plain dict holding only what was given, so the schema's defaults apply."""
    engine: dict[str, Any] = {"image": image, "env": _env_pairs(options["env"])}
    if cmd:
        engine["cmd"] = list(cmd)
    if options["entrypoint"] is not None:
        engine["entrypoint"] = [options["entrypoint"]] if options["entrypoint"] else []
    if options["workdir"]:
        engine["working_dir"] = options["workdir"]
    resources = {k: options[k] for k in ("cpus", "memory", "pids") if options[k] is not None}
    if options["gpus"] is not None:
        resources["gpus"] = _gpus(options["gpus"], options["gpu_vendor"])
    request: dict[str, Any] = {"engine": engine, "resources": resources}
    if options["volume"]:
        request["mounts"] = _mounts(options["volume"])
    plain = {
        "execution_id": "execution_id",
        "timeout": "timeout_seconds",
        "network": "network",
        "pull": "pull_policy",
        "retries": "retries",
    }
    request.update({field: options[opt] for opt, field in plain.items() if options[opt] is not None})
    if options["output_limit"] is not None:
        try:
            request["output_limit_bytes"] = parse_size(options["output_limit"])
        except ValueError as exc:
            raise InvalidRequest(f"output_limit_bytes: {exc}") from None
    return request
