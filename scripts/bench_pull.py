"""The pull part of scripts/bench.py: ``docker pull`` against a pull through dockrq.

A registry of the run's own (Debian's docker-registry on a free loopback port,
storage in a temporary directory, removed at the end) holds an image built here
from random data layers (incompressible: every byte crosses the wire), about
``--pull-mb`` MB. Each round pulls it once with ``docker pull`` and once through
dockrq (an execution of it, ``pull_policy: always``; its ``result.pull_seconds``),
in alternating order, removing it from the daemon before each timed pull.
``pull_ratio`` = median ``docker pull`` seconds / median dockrq pull seconds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from schemas import ExecutionStatus

try:  # run as scripts/bench.py (its folder first on sys.path) or imported as scripts.bench_pull
    import registry as reg  # type: ignore[no-redef]
except ImportError:  # pragma: no cover
    from scripts import registry as reg

LAYER_MB = 50  # the image is built from layers of this size (the last one smaller)


def measure_pull(bench: Any, megabytes: int, rounds: int, tick: Callable[[], None]) -> dict[str, Any]:
    """Rounds of ``docker pull`` vs a dockrq pull of one ~``megabytes`` MB image; the figures."""
    with tempfile.TemporaryDirectory(prefix="dockrq-bench-registry-") as root:
        registry = reg.Registry(root)
        registry.start()
        image = f"{registry.address}/dockrq-bench/pull-{bench.token}:v1"
        try:
            layers = max(1, -(-megabytes // LAYER_MB))
            reg.build_image(image, base=bench.args.image, random_layers=layers,
                            layer_bytes=megabytes * 1_000_000 // layers)
            digest = reg.push(image)
            docker_s, dockrq_s = [], []
            for n in range(rounds):
                order = (("docker", docker_s), ("dockrq", dockrq_s))
                for name, into in order if n % 2 == 0 else order[::-1]:
                    reg.remove_image(image)
                    into.append(_docker_pull(image) if name == "docker" else _dockrq_pull(bench, image))
                    tick()
        finally:
            reg.remove_image(image)
            registry.stop()
    docker_median, dockrq_median = statistics.median(docker_s), statistics.median(dockrq_s)
    return {
        "pull_ratio": round(docker_median / dockrq_median, 3),
        "docker_pull_s": [round(x, 3) for x in docker_s],
        "dockrq_pull_s": [round(x, 3) for x in dockrq_s],
        "image_mb": megabytes, "layers": layers, "digest": digest,
    }


def _docker_pull(image: str) -> float:
    t0 = time.perf_counter()
    reg.docker("pull", "-q", image)
    return time.perf_counter() - t0


def _dockrq_pull(bench: Any, image: str) -> float:
    request = bench.request("pull", ["true"], pull_policy="always")
    request["engine"]["image"] = image
    eid = bench.producer.submit(request)
    outcome = bench.producer.wait(eid, timeout=900)
    if outcome.status != ExecutionStatus.SUCCEEDED or outcome.result.pull_seconds is None:
        raise RuntimeError(f"pull through dockrq ended {outcome.status.value}: {outcome.error}")
    return outcome.result.pull_seconds
