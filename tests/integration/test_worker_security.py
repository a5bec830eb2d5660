"""No way in, bad input refused: real dockrq-worker processes, real Redis, real dockerd.

The worker's policy rejects what is over the operator's limits before any
container exists; its defaults cap memory and processes and keep the network
and GPUs off, and a worker can be kept off registries; an output flood of 256 MiB
(256 times the output cap, well over the memory bounds asserted) leaves the
worker's memory and Redis flat; a fork bomb stops at the pids
limit; nothing on the wire is a pickle; environment values reach the container
and nowhere else (descriptions, meta, events, outcome, logs, worker output,
dashboard); containers are never privileged.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from schemas import ExecutionStatus, Keys, LogBatch

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-value-9b1e"
MiB = 1024 * 1024
#: The flood: 256 times the default 1 MiB output cap, and over twice each memory bound it is held to.
FLOOD = 256 * MiB


def request(image, name, *cmd, **fields):
    return {"execution_id": name, "engine": {"image": image, "cmd": list(cmd)}, **fields}


def created_containers(docker_client, executor_id, since: datetime) -> list[dict]:
    """Every container create the daemon recorded for this executor id since ``since``."""
    # the API counts in whole seconds: until one second ahead takes in the current one
    events = docker_client.events(
        since=since, until=datetime.now(timezone.utc) + timedelta(seconds=1), decode=True,
        filters={"type": "container", "event": "create", "label": f"dockrq.executor={executor_id}"},
    )
    return list(events)


def test_requests_over_the_policy_are_rejected_before_any_container(
    spawn_worker, producer, docker_client, test_image, unique, tmp_path
):
    (tmp_path / "data").mkdir()
    spawn_worker("--max-memory", "512m", "--max-cpus", "1", "--max-timeout", "600",
                 "--allow-image", "dockrq-test/*", "--allow-mount-root", str(tmp_path / "data"))
    since = datetime.now(timezone.utc)
    refused = {
        "mem": ({"resources": {"memory": "1g"}},
                "resources.memory: 1073741824 is above this worker's limit 536870912 (DOCKRQ_MAX_MEMORY)"),
        "cpus": ({"resources": {"cpus": 1.5}}, "resources.cpus: 1.5 is above this worker's limit 1 (DOCKRQ_MAX_CPUS)"),
        "pids": ({"resources": {"pids": 100_000}}, "resources.pids: 100000 is above this worker's limit 4096 (DOCKRQ_MAX_PIDS)"),
        "time": ({"timeout_seconds": 601}, "timeout_seconds: 601 is above this worker's limit 600 (DOCKRQ_MAX_TIMEOUT_SECONDS)"),
        "out": ({"output_limit_bytes": 64 * MiB},
                "output_limit_bytes: 67108864 is above this worker's limit 16777216 (DOCKRQ_MAX_OUTPUT_BYTES)"),
        "net": ({"network": "bridge"}, "network: 'bridge' is not allowed on this worker (DOCKRQ_ALLOW_BRIDGE)"),
        "mount": ({"mounts": [{"source": "/etc", "target": "/host-etc"}]},
                  f"mounts.0.source: '/etc' is not below an allowed mount root (allowed: {tmp_path / 'data'}) "
                  "(DOCKRQ_ALLOWED_MOUNT_ROOTS)"),
    }
    ids = {name: producer.submit(request(test_image, f"{name}-{unique}", "true", **fields))
           for name, (fields, _) in refused.items()}
    ids["image"] = producer.submit(request("busybox:latest", f"image-{unique}", "true"))
    for name, eid in ids.items():
        outcome = producer.wait(eid, timeout=30)
        assert outcome.status == ExecutionStatus.REJECTED and outcome.result is None, name
        if name == "image":
            assert outcome.error.message == (
                "engine.image: 'busybox:latest' is not allowed on this worker (allowed: dockrq-test/*) (DOCKRQ_ALLOWED_IMAGES)"
            )
        else:
            assert outcome.error.message == refused[name][1]
    assert created_containers(docker_client, spawn_worker.executor_id, since) == []

    # within the limits it runs, with the mount the policy allows
    (tmp_path / "data" / "in.txt").write_text("mounted\n")
    ok = producer.submit(request(test_image, f"ok-{unique}", "cat", "/data/in.txt",
                                 mounts=[{"source": str(tmp_path / "data"), "target": "/data"}]))
    outcome = producer.wait(ok, timeout=60)
    assert (outcome.status, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, "mounted\n")
    assert len(created_containers(docker_client, spawn_worker.executor_id, since)) == 1


def test_gpus_and_pull_policies_only_as_the_operator_allows(spawn_worker, producer, docker_client, test_image, unique):
    spawn_worker("--allow-pull", "never")  # a worker that must never touch a registry; GPUs left at 0
    since = datetime.now(timezone.utc)
    gpu = producer.submit(request(test_image, f"gpu-{unique}", "true", resources={"gpus": {"count": 1}}))
    pull = producer.submit(request(test_image, f"pull-{unique}", "true", pull_policy="always"))
    expected = {
        gpu: "resources.gpus: 1 is above this worker's limit 0 (DOCKRQ_MAX_GPUS)",
        pull: "pull_policy: 'always' is not allowed on this worker (allowed: never) (DOCKRQ_ALLOWED_PULL_POLICIES)",
    }
    for eid, message in expected.items():
        outcome = producer.wait(eid, timeout=30)
        assert (outcome.status, outcome.result) == (ExecutionStatus.REJECTED, None), eid
        assert (outcome.error.code, outcome.error.message) == ("policy_violation", message)
    assert created_containers(docker_client, spawn_worker.executor_id, since) == []

    # a request with the default pull policy runs with 'never': the local image, and no pull for a missing one
    local = producer.submit(request(test_image, f"local-{unique}", "echo", "local"))
    outcome = producer.wait(local, timeout=60)
    assert (outcome.status, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, "local\n")
    absent = producer.submit(request(f"dockrq-test/absent-{unique}:1", f"absent-{unique}", "true"))
    outcome = producer.wait(absent, timeout=30)
    assert (outcome.status, outcome.error.code) == (ExecutionStatus.ERROR, "image_pull")
    assert "pull_policy is 'never'" in outcome.error.message
    assert len(created_containers(docker_client, spawn_worker.executor_id, since)) == 1


def test_bridge_network_only_where_the_operator_allows_it(spawn_worker, producer, test_image, unique):
    default = spawn_worker()
    refused = producer.submit(request(test_image, f"br-no-{unique}", "ls", "/sys/class/net", network="bridge"))
    assert producer.wait(refused, timeout=30).status == ExecutionStatus.REJECTED
    default.kill()
    spawn_worker("--allow-bridge")
    allowed = producer.submit(request(test_image, f"br-yes-{unique}", "ls", "/sys/class/net", network="bridge"))
    outcome = producer.wait(allowed, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED and "eth0" in outcome.result.stdout.split()


def test_containers_run_capped_unprivileged_and_offline_by_default(spawn_worker, producer, docker_client, test_image, unique):
    spawn_worker()
    eid = producer.submit(request(
        test_image, f"caps-{unique}", "sh", "-c", "grep NoNewPrivs /proc/self/status; ls /sys/class/net; sleep 30",
    ))
    deadline = time.monotonic() + 30
    while (view := producer.status(eid)).state.value != "running":
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    container = docker_client.containers.get(view.container_id)
    host = container.attrs["HostConfig"]
    assert host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "none" and not host.get("CapAdd")
    assert (host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (1024 * MiB, 1024 * MiB, 512)  # the defaults
    producer.cancel(eid)
    outcome = producer.wait(eid, timeout=30)
    assert outcome.status == ExecutionStatus.CANCELLED
    assert outcome.result.stdout.split() == ["NoNewPrivs:", "1", "lo"]  # no eth0: no network
    # a request cannot ask for privileges: there is no such field, and unknown fields are refused
    with pytest.raises(Exception, match="privileged: Extra inputs are not permitted"):
        producer.submit(request(test_image, f"priv-{unique}", "true", privileged=True))


# -- floods --------------------------------------------------------------------------------


def test_a_256mib_output_flood_leaves_worker_memory_and_redis_flat(spawn_worker, producer, redis_client, test_image, unique):
    worker = spawn_worker()
    proc = psutil.Process(worker.pid)
    warm = producer.submit(request(test_image, f"warm-{unique}", "sh", "-c", "seq 1 20000"))
    assert producer.wait(warm, timeout=60).status == ExecutionStatus.SUCCEEDED
    baseline_rss = proc.memory_info().rss
    baseline_redis = redis_client.info("memory")["used_memory"]

    eid = producer.submit(request(
        test_image, f"flood-{unique}", "sh", "-c", f"head -c {FLOOD} /dev/zero | tr '\\0' x; echo done >&2",
        timeout_seconds=600,
    ))
    peak_rss, peak_redis, samples = baseline_rss, baseline_redis, 0
    while True:
        peak_rss = max(peak_rss, proc.memory_info().rss)
        peak_redis = max(peak_redis, redis_client.info("memory")["used_memory"])
        samples += 1
        try:
            outcome = producer.wait(eid, timeout=0.2)
            break
        except TimeoutError:
            continue

    log_key = Keys(spawn_worker.prefix).log_stream(eid)
    stream_bytes = redis_client.memory_usage(log_key, samples=0)
    replayed = sum(len(e.data) for _, f in redis_client.xrange(log_key)
                   for e in LogBatch.model_validate_json(f[b"batch"]).entries)
    print(f"\nflood: worker RSS {baseline_rss / MiB:.1f} -> peak {peak_rss / MiB:.1f} MiB over {samples} samples; "
          f"Redis used_memory {baseline_redis / MiB:.1f} -> peak {peak_redis / MiB:.1f} MiB; "
          f"log stream {redis_client.xlen(log_key)} batches, {stream_bytes / MiB:.1f} MiB")
    assert outcome.status == ExecutionStatus.SUCCEEDED
    result = outcome.result
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stdout == "x" * MiB and result.stderr == "done\n"  # the default 1 MiB per stream, kept whole
    assert replayed == MiB + len("done\n")  # the log stream carries what was kept, not the flood
    assert samples > 10
    assert peak_rss - baseline_rss < 100 * MiB
    assert peak_redis - baseline_redis < 64 * MiB
    assert stream_bytes < 8 * MiB


def test_a_fork_bomb_stops_at_the_pids_limit(spawn_worker, producer, docker_client, test_image, unique):
    spawn_worker()
    bomb = producer.submit(request(
        test_image, f"bomb-{unique}", "sh", "-c", "bomb() { while :; do bomb | bomb; done; }; bomb & while :; do :; done",
        resources={"pids": 64, "cpus": 0.5}, timeout_seconds=3,
    ))
    deadline = time.monotonic() + 30
    while (view := producer.status(bomb)).state.value != "running":
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    # the daemon's view while it runs (each stats call takes about a second); and, where the
    # host uses cgroup v1 with the cgroupfs driver, the kernel's own high-water mark
    pids_seen, peak = [], None
    peak_file = Path(f"/sys/fs/cgroup/pids/docker/{view.container_id}/pids.peak")
    while producer.status(bomb).state.value == "running":
        try:
            stats = docker_client.api.stats(view.container_id, stream=False, one_shot=True)
            if peak_file.exists():
                peak = int(peak_file.read_text())
        except Exception:  # noqa: BLE001 - the container went away between the calls
            break
        pids_seen.append(stats.get("pids_stats", {}).get("current", 0))
    outcome = producer.wait(bomb, timeout=60)
    print(f"\nfork bomb: pids seen {pids_seen}, kernel peak {peak}; outcome {outcome.status.value}")
    assert outcome.status == ExecutionStatus.TIMED_OUT
    assert pids_seen and 10 < max(pids_seen) <= 64
    assert peak is None or peak <= 64
    assert "can't fork" in outcome.result.stderr

    # without a pids limit in the request the worker's default (512) holds: the shell
    # numbers each fork with a builtin echo, and dies at the first one refused
    loop = producer.submit(request(
        test_image, f"loop-{unique}", "sh", "-c",
        "read max < /sys/fs/cgroup/pids/pids.max || read max < /sys/fs/cgroup/pids.max; echo max $max; "
        "i=0; while [ $i -lt 700 ]; do i=$((i+1)); echo $i; sleep 60 & done",
        timeout_seconds=60,
    ))
    outcome = producer.wait(loop, timeout=90)
    lines = outcome.result.stdout.split("\n")
    assert lines[0] == "max 512"
    forked = int(lines[-2]) - 1  # the last number printed is the fork that failed
    print(f"default pids limit: {forked} background processes + the shell, then: {outcome.result.stderr.strip()}")
    assert outcome.status == ExecutionStatus.FAILED and forked + 1 <= 512
    assert "can't fork" in outcome.result.stderr
    # the worker is fine and serves the next execution
    after = producer.submit(request(test_image, f"after-{unique}", "echo", "fine"))
    assert producer.wait(after, timeout=60).result.stdout == "fine\n"


# -- the wire: no pickle, no environment values -------------------------------------------------


def _values(redis, key: bytes) -> list[tuple[str, bytes]]:
    """(field, raw value) of every value a key holds, whatever its type."""
    kind = redis.type(key).decode()
    if kind == "string":
        return [("", redis.get(key))]
    if kind == "hash":
        return [(f.decode(), v) for f, v in redis.hgetall(key).items()]
    if kind == "list":
        return [("", v) for v in redis.lrange(key, 0, -1)]
    if kind == "set":
        return [("", v) for v in redis.smembers(key)]
    if kind == "zset":
        return [("", v) for v in redis.zrange(key, 0, -1)]
    if kind == "stream":
        return [(f.decode(), v) for _, fields in redis.xrange(key) for f, v in fields.items()]
    return []


def _layers(field: str, value: bytes) -> list[bytes]:
    """The value and what rq wraps in it: zlib (job data, exc_info), base64 (results)."""
    layers = [value]
    if field in ("return_value", "exc_string"):
        layers.append(base64.b64decode(value))
    for layer in list(layers):
        if layer[:1] == b"x":
            try:
                layers.append(zlib.decompress(layer))
            except zlib.error:
                pass
    return layers


def test_no_pickle_on_the_wire_and_environment_values_stay_in_the_job_data(
    spawn_worker, redis_url, redis_client, docker_client, test_image, unique, dashboard_json
):
    worker = spawn_worker("--log-level", "DEBUG")
    keys = Keys(spawn_worker.prefix)
    events: list[bytes] = []
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(keys.events, f"{spawn_worker.prefix}:exec:*")
    listening = threading.Event()

    def listen():
        listening.set()
        for message in pubsub.listen():
            if message["data"] == b"stop":
                return
            events.append(message["data"])

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    listening.wait(5)
    time.sleep(0.2)

    # submitted with the dockrq CLI: -e SECRET=...; the container proves it got the value
    # (its length and start) without printing it and without the value in its command line
    eid = f"wire-{unique}"
    cli = Path(sys.executable).with_name("dockrq")
    out = subprocess.run(
        [str(cli), "--redis-url", redis_url, "--prefix", spawn_worker.prefix, "--queue", spawn_worker.queue,
         "submit", "--id", eid, "-e", f"SECRET={SECRET}", test_image,
         "sh", "-c", f'test ${{#SECRET}} = {len(SECRET)} && case "$SECRET" in s3cr3t-*) echo got it; echo some stderr >&2;; esac'],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "got it\n" and SECRET not in out.stdout + out.stderr
    redis_client.publish(keys.events, "stop")
    listener.join(5)
    pubsub.close()

    # the dashboard shows the execution, without the value
    dash = dashboard_json(redis_url)
    job_json = dash(f"/data/job/{eid}.json")
    assert job_json["description"].startswith("docker run --rm -e SECRET=***")
    pages = [job_json, dash("/data/workers.json"), dash("/data/queues.json"),
             dash(f"/data/jobs/{spawn_worker.queue}/finished/10/asc/1.json")]
    assert eid in json.dumps(pages[-1])
    for page in pages:
        assert SECRET not in json.dumps(page)

    # every key this test's executions, queue, prefix and worker wrote
    mine = [k for k in redis_client.scan_iter(count=1000) if unique.encode() in k]
    assert any(k == f"rq:job:{eid}".encode() for k in mine)
    holders = []
    for key in mine:
        for field, value in _values(redis_client, key):
            for layer in _layers(field, value):
                assert not layer.startswith(b"\x80"), f"pickle in {key!r} {field}"
                if SECRET.encode() in layer:
                    holders.append((key.decode(), field))
    # the value is in the rq job's arguments (the worker needs it to run the container) and nowhere else
    assert holders == [(f"rq:job:{eid}", "data")]
    job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
    raw = redis_client.hgetall(f"rq:job:{eid}".encode())
    func, instance, args, kwargs = json.loads(zlib.decompress(raw[b"data"]))
    assert (func, instance, kwargs, args[0]["engine"]["env"]) == ("worker.jobs.execute", None, {}, {"SECRET": SECRET})
    assert json.loads(raw[b"meta"]) == job.meta and job.meta["status"] == "succeeded"
    assert SECRET not in (job.description or "")
    # one copy of the result (issue 14): the outcome, no rq results stream
    assert not redis_client.exists(f"rq:results:{eid}")
    assert json.loads(redis_client.lindex(keys.outcome(eid), 0))["status"] == "succeeded"

    # pub/sub: events and live logs carried no pickle and no value
    assert events and all(not m.startswith(b"\x80") and SECRET.encode() not in m for m in events)
    assert {json.loads(m).get("status") for m in events if b'"status"' in m} >= {"queued", "running", "succeeded"}
    # the worker's own output, at DEBUG
    assert SECRET not in worker.output() and eid in worker.output()
