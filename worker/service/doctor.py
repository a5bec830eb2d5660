"""Pre-flight checks of what a worker needs: Redis (new enough) and the Docker daemon.

Used by ``dockrq-worker doctor`` to tell an operator plainly what is wrong,
and by ``dockrq-worker run`` to refuse to start instead of failing every job.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis

from schemas import ExecutionRequest, ExecutionStatus, Keys
from schemas.connections import client_from_url, describe_redis_error
from worker.executor import DockerUnavailableError, ExecutorError
from worker.service.runtime import build_executor

from worker.config.settings import WorkerSettings

# BLMOVE, which waiters block on, arrived in Redis 6.2.
MIN_REDIS_VERSION = (6, 2)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<9} {self.detail}"


def redis_target(connection: redis.Redis) -> str:
    """Where a client points, without its credentials."""
    pool = connection.connection_pool
    kw = pool.connection_kwargs
    service = getattr(pool, "service_name", None)
    if service is not None:  # redis.sentinel.SentinelConnectionPool
        sentinels = ",".join(f"{c.connection_pool.connection_kwargs.get('host')}:{c.connection_pool.connection_kwargs.get('port')}"
                             for c in pool.sentinel_manager.sentinels)
        return f"redis+sentinel://{sentinels}/{service}/{kw.get('db', 0)}"
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    scheme = "rediss" if issubclass(pool.connection_class, redis.SSLConnection) else "redis"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def check_redis(settings: WorkerSettings) -> Check:
    try:
        connection = client_from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    except ValueError as exc:
        return Check("redis", False, f"invalid DOCKRQ_REDIS_URL / --redis-url: {exc}")
    target = redis_target(connection)
    try:
        version = str(connection.info("server").get("redis_version", "0"))
        numbers = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if numbers < MIN_REDIS_VERSION:
            return Check("redis", False, f"{target}: Redis {version} is too old; 6.2 or newer is needed (BLMOVE)")
        problem = _control_subscription_problem(connection, settings)
    except redis.AuthenticationError as exc:
        return Check("redis", False, f"{target}: authentication failed ({exc})")
    except redis.RedisError as exc:
        return Check("redis", False, f"{target}: not reachable ({describe_redis_error(exc)})")
    finally:
        connection.close()
    if problem:
        return Check("redis", False, f"{target}: {problem}")
    return Check("redis", True, f"{target}: Redis {version}")


def _control_subscription_problem(connection: redis.Redis, settings: WorkerSettings) -> str | None:
    """A worker hears cancels through one PSUBSCRIBE; an ACL user may lack it (Redis
    allows a pattern subscription only when that very pattern is in the user's channels)."""
    pattern = Keys(settings.prefix).control_channel("*")
    pubsub = connection.pubsub()
    try:
        pubsub.psubscribe(pattern)
        pubsub.get_message(timeout=5)
    except redis.exceptions.NoPermissionError:
        return f"the Redis user may not PSUBSCRIBE {pattern} (cancels would not reach the worker): add '&{pattern}' to its ACL"
    finally:
        pubsub.close()
    return None


def check_docker(settings: WorkerSettings) -> Check:
    try:
        executor = build_executor(settings)
    except DockerUnavailableError as exc:
        return Check("docker", False, str(exc))
    try:
        if not executor.is_installed():
            return Check("docker", False, "the Docker daemon does not answer (is dockerd running? is DOCKER_HOST right?)")
        return Check("docker", True, f"daemon answers; executor id {settings.executor_id}")
    finally:
        executor.close()


def check_container(settings: WorkerSettings, image: str, timeout: float = 120.0) -> Check:
    """Run ``true`` in ``image`` through the executor, as a job would."""
    try:
        executor = build_executor(settings)
    except DockerUnavailableError as exc:
        return Check("container", False, str(exc))
    request = ExecutionRequest(execution_id=f"doctor-{uuid.uuid4().hex}", engine={"image": image, "cmd": ["true"]})
    try:
        result = executor.run(request, timeout=timeout)
    except (ExecutorError, TimeoutError) as exc:
        return Check("container", False, f"{image}: {exc}")
    finally:
        executor.close()
    if result.status != ExecutionStatus.SUCCEEDED:
        detail = result.error_msg or f"exit code {result.exit_code}"
        return Check("container", False, f"{image}: {result.status.value}: {detail}")
    return Check("container", True, f"{image}: ran `true` and removed the container")
