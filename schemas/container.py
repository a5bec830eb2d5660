"""The ``docker run`` options of a request beyond image, command and limits.

Each one keeps Docker's own name and meaning (``docker run --user``,
``--read-only``, ``--tmpfs``, ``--shm-size``, ``--cap-add``/``--cap-drop``,
``--ulimit``, ``--init``, ``--stop-signal``, ``--stop-timeout``, ``--label``,
``--interactive``) and is validated here, so a typo is refused with the field
named before anything is enqueued, rather than failing later in the daemon.
What a worker *allows* (added capabilities, the longest stop timeout) is its
policy's business (``worker/config/policy.py``), not the schema's.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, field_validator, model_validator

from .defaults import MAX_STDIN_BYTES


# The labels dockrq sets itself (``dockrq.executor``, ``dockrq.execution``, ...) are how
# workers find, adopt and reap containers: a request must never set or fake one.
RESERVED_LABEL_PREFIX = "dockrq."

# Linux capabilities (capabilities(7)) by their bit number, as Docker names them (no CAP_ prefix).
CAPABILITIES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
ALL_CAPABILITIES = "ALL"

# Resource names ``docker run --ulimit`` takes (setrlimit(2) without RLIMIT_).
ULIMIT_NAMES: tuple[str, ...] = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)

# Signal names of Linux (signal(7)), as ``docker run --stop-signal`` takes them.
SIGNALS: tuple[str, ...] = (
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU",
    "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS", "RTMIN", "RTMAX",
)
_RT_SIGNAL = re.compile(r"^RTMIN\+([0-9]{1,2})$|^RTMAX-([0-9]{1,2})$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?$")


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


def normalize_capability(name: str) -> str:
    """``net_admin``, ``CAP_NET_ADMIN`` -> ``NET_ADMIN`` (Docker's own normalisation);
    ValueError for a name that is no Linux capability."""
    if not isinstance(name, str):
        raise ValueError("a capability is a name such as 'NET_ADMIN'")
    cap = name.strip().upper().removeprefix("CAP_")
    if cap != ALL_CAPABILITIES and cap not in CAPABILITIES:
        raise ValueError(f"{name!r} is not a Linux capability (e.g. NET_ADMIN, SYS_PTRACE, or ALL)")
    return cap


def _capabilities(values: list[str]) -> list[str]:
    return list(dict.fromkeys(normalize_capability(v) for v in values))


Capabilities = Annotated[list[str], Field(default_factory=list, max_length=64)]


def normalize_signal(value: str) -> str:
    """``term``, ``SIGTERM``, ``15`` -> ``SIGTERM`` / ``15``, as ``docker run --stop-signal`` reads
    them; ValueError for anything else."""
    text = value.strip().upper() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit():
        if not 1 <= int(text) <= 64:
            raise ValueError(f"signal number {value!r} is not between 1 and 64")
        return str(int(text))
    name = text.removeprefix("SIG")
    rt = _RT_SIGNAL.match(name)
    if name in SIGNALS or (rt and int(rt.group(1) or rt.group(2)) <= 30):
        return f"SIG{name}"
    raise ValueError(f"{value!r} is not a signal name or number (e.g. SIGTERM, SIGUSR1, 15)")


#: The largest size or count Docker takes: its API's fields are Go int64s (a larger number is
#: refused by the daemon's JSON decoder: ``cannot unmarshal number ... of type int64``).
INT64_MAX = 2**63 - 1


class TmpfsMount(_Model):
    """A tmpfs mounted at ``target`` (``docker run --tmpfs target:size=64m``); memory-backed,
    so its pages count against the container's memory limit. ``size`` in bytes ('64m' accepted);
    none: the kernel's default (half the host's RAM, still within the memory limit)."""

    target: Annotated[str, StringConstraints(min_length=2, max_length=4096)]
    size: StrictInt | None = Field(default=None, ge=4096, le=INT64_MAX, description="bytes; '64m' accepted")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        if any(c in v for c in ":,\x00") or any(c.isspace() for c in v):
            raise ValueError("must not contain ':', ',', whitespace or NUL (Docker's --tmpfs syntax)")
        return v

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: object) -> object:
        from .engine import parse_size

        return v if v is None else parse_size(v)  # type: ignore[arg-type]


class Ulimit(_Model):
    """One resource limit (``docker run --ulimit nofile=1024:2048``); ``hard`` defaults to ``soft``,
    -1 is unlimited."""

    name: str
    soft: StrictInt = Field(ge=-1, le=INT64_MAX)
    hard: StrictInt | None = Field(default=None, ge=-1, le=INT64_MAX)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in ULIMIT_NAMES:
            raise ValueError(f"{v!r} is not a ulimit name (one of {', '.join(ULIMIT_NAMES)})")
        return v

    @model_validator(mode="after")
    def _soft_within_hard(self) -> Ulimit:
        hard = self.soft if self.hard is None else self.hard
        if hard != -1 and (self.soft == -1 or self.soft > hard):
            raise ValueError(f"soft limit {self.soft} of {self.name} is above its hard limit {hard}")
        return self

    @property
    def effective_hard(self) -> int:
        return self.soft if self.hard is None else self.hard


def check_user(v: str | None) -> str | None:
    """``uid[:gid]`` or ``name[:group]`` as ``docker run --user`` takes it."""
    if v is not None and not _USER.match(v):
        raise ValueError(f"{v!r} is not a user as docker run takes it: uid[:gid] or name[:group]")
    return v


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Container labels: no key in dockrq's own ``dockrq.`` namespace, no NUL, bounded sizes."""
    if len(labels) > 64:
        raise ValueError(f"{len(labels)} labels is more than 64")
    for key, value in labels.items():
        if not key or len(key) > 256 or "\x00" in key or "=" in key or any(c.isspace() for c in key):
            raise ValueError(f"label name {key!r} is empty, longer than 256, or contains '=', whitespace or NUL")
        if key.lower().startswith(RESERVED_LABEL_PREFIX):
            raise ValueError(f"label {key!r} is in the {RESERVED_LABEL_PREFIX!r} namespace, which dockrq keeps for itself")
        if len(value) > 4096 or "\x00" in value:
            raise ValueError(f"label {key!r}: the value is longer than 4096 or contains NUL")
    return labels


def check_stdin(v: str | None) -> str | None:
    """Base64 of the bytes given to the container's stdin; at most MAX_STDIN_BYTES once decoded."""
    if v is None:
        return v
    try:
        data = base64.b64decode(v.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("must be the input's bytes in base64") from None
    if len(data) > MAX_STDIN_BYTES:
        raise ValueError(f"{len(data)} bytes of input is above the limit of {MAX_STDIN_BYTES} bytes (512k)")
    return v


def check_tmpfs(mounts: list[TmpfsMount]) -> list[TmpfsMount]:
    seen: set[str] = set()
    for mount in mounts:
        target = mount.target.rstrip("/") or "/"
        if target in seen:
            raise ValueError(f"two tmpfs mounts at {mount.target!r}")
        seen.add(target)
    return mounts


def check_ulimits(ulimits: list[Ulimit]) -> list[Ulimit]:
    names = [u.name for u in ulimits]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"ulimit {name!r} is given twice")
    return ulimits


# Request fields added with the docker run options, and the value that means "not asked for".
# A producer leaves them out of the stored request while they hold it, so a request that uses
# none of them is, byte for byte, what a worker from before these options takes.
_TOP_LEVEL_DEFAULTS: dict[str, object] = {
    "read_only": False, "tmpfs": [], "cap_add": [], "cap_drop": [], "ulimits": [], "init": False,
    "stop_signal": None, "stop_timeout": None, "labels": {}, "stdin_base64": None,
}


def compact_payload(payload: dict) -> dict:
    """``payload`` (a request's ``model_dump(mode="json")``) without the docker run options it
    does not use (``engine.user``, ``resources.shm_size`` and the top-level ones above)."""
    out = {k: v for k, v in payload.items() if k not in _TOP_LEVEL_DEFAULTS or v != _TOP_LEVEL_DEFAULTS[k]}
    for section, key in (("engine", "user"), ("resources", "shm_size")):
        part = out.get(section)
        if isinstance(part, dict) and key in part and part[key] is None:
            out[section] = {k: v for k, v in part.items() if k != key}
    return out
