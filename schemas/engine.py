"""What an execution runs and with what limits: ``EngineSpec`` (image, command,
environment, user), ``Resources`` (cpus, memory, pids, GPUs, /dev/shm) and the
docker-style sizes they take (``parse_size``/``format_size``).

Part of the request (``schemas/execution.py`` re-exports every name, so
``from schemas.execution import EngineSpec`` keeps working).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StringConstraints, field_validator, model_validator

from .container import INT64_MAX, check_user
from .reference import check_image_reference


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


def _no_nul(value: str, what: str) -> str:
    # Docker and the kernel cut strings at NUL; refusing them here keeps what runs
    # identical to what was asked for.
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
    return value


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _not_a_size(value: object) -> ValueError:
    shown = repr(value)[:40]
    if isinstance(value, str) and value.strip().startswith("-"):
        return ValueError(f"size must be 0 or more, not {shown}")
    return ValueError(f"size must be a number of bytes or a string like '256m', not {shown}")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a docker-style size string (``256m``, ``1g``, ``512KiB``).
    ValueError naming the value given otherwise (a negative string: "must be 0 or more")."""
    if isinstance(value, bool):
        raise _not_a_size(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value) <= 32:
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise _not_a_size(value)


def format_size(size: int) -> str:
    """Bytes as docker writes them (``256m``) when that is exact, else plain bytes; ``parse_size`` reads it back."""
    for suffix in ("g", "m", "k"):
        unit = _SIZE_UNITS[suffix]
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


class EngineSpec(_Model):
    """What to run: the image and how to start it, as ``docker run`` would."""

    image: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = Field(default=None, description="docker run --user: uid[:gid] or name[:group]")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if any(c.isspace() for c in v):
            raise ValueError("image must not contain whitespace")
        return check_image_reference(_no_nul(v, "image"))  # Docker's grammar: schemas/reference.py

    @field_validator("entrypoint", "cmd")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        for arg in v or ():
            _no_nul(arg, "arguments")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or "=" in key:
                raise ValueError(f"environment variable name {key!r} is empty or contains '='")
            _no_nul(key, "environment names")
            _no_nul(value, "environment values")
        return v

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("working_dir must be an absolute path")
        return v if v is None else _no_nul(v, "working_dir")

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        return check_user(v)


class GpuRequest(_Model):
    """GPUs by count or by device index. NVIDIA goes through Docker device requests;
    ``amd``/``intel`` map the vendor's device nodes (``/dev/kfd``+``/dev/dri``, ``/dev/dri``).

    An AMD/Intel GPU is its DRI render node, and nothing picks N of them for us the way
    the NVIDIA runtime does: such a request names its render nodes (``device_ids``) or
    asks for all of them (``count: -1``, the whole of ``/dev/dri``). A count of N is
    refused rather than quietly given every GPU on the host.
    """

    vendor: Literal["nvidia", "amd", "intel"] = "nvidia"
    count: StrictInt | None = Field(default=None, ge=-1, description="-1 means all GPUs")
    device_ids: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]] | None = Field(
        default=None, min_length=1
    )

    @model_validator(mode="after")
    def _one_of(self) -> GpuRequest:
        if (self.count is None) == (self.device_ids is None):
            raise ValueError("give exactly one of count or device_ids")
        if self.count == 0:
            raise ValueError("count must be -1 (all) or at least 1")
        if self.vendor != "nvidia" and self.count is not None and self.count != -1:
            raise ValueError(
                f"{self.vendor} GPUs are not picked by count ({self.count}): name their render nodes "
                f"in device_ids (0, 1, ...) or give count -1 (all)"
            )
        # AMD/Intel ids index DRI render nodes; anything else would name a host device.
        if self.vendor != "nvidia" and self.device_ids and not all(i.isdigit() for i in self.device_ids):
            raise ValueError(f"device_ids for {self.vendor} are render node indexes (0, 1, ...)")
        return self


class Resources(_Model):
    """Limits that become real cgroup limits: cpus in cores, memory in bytes."""

    # Docker's smallest CPU quota is 0.01 core; below it a limit would be refused or lost.
    # Numbers are strict (here and in every request field): a JSON true is not 1.
    cpus: StrictFloat | None = Field(default=None, ge=0.01, le=1024)
    memory: StrictInt | None = Field(default=None, ge=6 * 1024 * 1024, le=INT64_MAX, description="bytes; '256m' accepted")
    pids: StrictInt | None = Field(default=None, ge=1, le=INT64_MAX)
    gpus: GpuRequest | None = None
    # /dev/shm (docker run --shm-size); Docker's default is 64 MiB. Counted against memory.
    shm_size: StrictInt | None = Field(default=None, ge=4096, le=INT64_MAX, description="bytes; '256m' accepted")

    @field_validator("cpus")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("cpus must be a finite number")
        return v

    @field_validator("memory", "shm_size", mode="before")
    @classmethod
    def _memory(cls, v: object) -> object:
        return v if v is None else parse_size(v)  # type: ignore[arg-type]
