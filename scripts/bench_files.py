"""Files in and out of a container: dockrq (through Redis) against ``docker cp``, in one run.

A directory of ``mib`` files of 1 MiB each (random bytes) is measured both ways:

* in, raw: ``docker cp DIR CID:/in`` into a created container (the CLI, as a user runs it);
* in, dockrq: an execution of ``true`` submitted with ``inputs={"/in": DIR}``, submit to
  outcome, minus the same execution without inputs in the same round;
* out, raw: ``docker cp CID:/out DEST`` from a container that has written the directory;
* out, dockrq: an execution writing the directory with ``outputs=["/out"]``, submit to
  outcome plus ``Producer.outputs`` onto the disk, minus the same execution without outputs.

Rounds alternate raw and dockrq so noise on the machine hits both alike; the median of
each side counts. Rates are MB/s (10^6 bytes) of file contents.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def _write_script(mib: int) -> str:
    return f"mkdir /out && i=0 && while [ $i -lt {mib} ]; do head -c {MiB} /dev/urandom > /out/f$i; i=$((i+1)); done"


class FilesBench:
    """Needs the caller's ``Bench`` (producer, image, ids, docker client, label) and running workers."""

    def __init__(self, bench: Any, mib: int) -> None:
        self.bench = bench
        self.mib = mib
        self.size = mib * MiB
        self.tmp = Path(tempfile.mkdtemp(prefix="dockrq-bench-files-"))
        self.source = self.tmp / "in"
        self.source.mkdir()
        for i in range(mib):
            (self.source / f"f{i}").write_bytes(os.urandom(MiB))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- raw: docker cp ------------------------------------------------------------

    def _container(self, cmd: list[str], run: bool) -> str:
        api = self.bench.docker
        cid = api.create_container(
            self.bench.args.image, command=cmd, host_config=api.create_host_config(network_mode="none"),
            labels={"dockrq.bench": self.bench.token},
        )["Id"]
        if run:
            api.start(cid)
            api.wait(cid)
        return cid

    def _docker_cp(self, src: str, dst: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(["docker", "cp", src, dst], check=True, capture_output=True, timeout=300)
        return time.perf_counter() - t0

    def raw_in(self) -> float:
        cid = self._container(["true"], run=False)
        try:
            return self._docker_cp(str(self.source), f"{cid}:/in")
        finally:
            self.bench.docker.remove_container(cid, force=True)

    def raw_out(self) -> float:
        cid = self._container(["sh", "-c", _write_script(self.mib)], run=True)
        dest = self.tmp / "raw-out"
        try:
            return self._docker_cp(f"{cid}:/out", str(dest))
        finally:
            self.bench.docker.remove_container(cid, force=True)
            shutil.rmtree(dest, ignore_errors=True)

    # -- dockrq --------------------------------------------------------------------

    def _execution(self, kind: str, cmd: list[str], after: Callable[[str], None] | None = None, **submit: Any) -> float:
        producer = self.bench.producer
        fields = submit.pop("fields", {})
        t0 = time.perf_counter()
        eid = producer.submit(self.bench.request(kind, cmd, **fields), **submit)
        outcome = producer.wait(eid, timeout=300)
        if after is not None:
            after(eid)
        elapsed = time.perf_counter() - t0
        result = outcome.result
        if result is None or result.status.value != "succeeded" or result.outputs_truncated:
            raise RuntimeError(f"files execution {eid} ended {outcome.status.value}: {outcome.error}")
        return elapsed

    def dockrq_in(self) -> float:
        base = self._execution("fin0", ["true"])
        with_files = self._execution("fin", ["true"], inputs={"/in": self.source})
        return max(with_files - base, 1e-3)

    def dockrq_out(self) -> float:
        script = ["sh", "-c", _write_script(self.mib)]
        dest = self.tmp / "dockrq-out"
        base = self._execution("fout0", script)
        with_files = self._execution(
            "fout", script, after=lambda eid: self.bench.producer.outputs(eid, dest),
            fields={"outputs": ["/out"], "output_files_limit_bytes": self.size},
        )
        shutil.rmtree(dest, ignore_errors=True)
        return max(with_files - base, 1e-3)

    # -- the run ---------------------------------------------------------------------

    def run(self, rounds: int, tick: Callable[[], None]) -> dict[str, Any]:
        self.bench.producer.max_input_bytes = max(self.bench.producer.max_input_bytes, self.size)
        self.dockrq_in()  # warm-up: imports, connections, the image's layers in the page cache
        self.raw_in()
        samples: dict[str, list[float]] = {"raw_in": [], "dockrq_in": [], "raw_out": [], "dockrq_out": []}
        for _ in range(rounds):
            for name in samples:
                samples[name].append(getattr(self, name)())
                tick()
        mb = self.size / 1e6
        rate = {name: round(mb / statistics.median(values), 2) for name, values in samples.items()}
        return {
            "files_mib": self.mib,
            "files_in_mb_per_s": rate["dockrq_in"],
            "files_out_mb_per_s": rate["dockrq_out"],
            "docker_cp_in_mb_per_s": rate["raw_in"],
            "docker_cp_out_mb_per_s": rate["raw_out"],
            "files_in_ratio": round(rate["dockrq_in"] / rate["raw_in"], 3),
            "files_out_ratio": round(rate["dockrq_out"] / rate["raw_out"], 3),
            "seconds": {name: [round(v, 3) for v in values] for name, values in samples.items()},
        }
