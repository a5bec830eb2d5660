"""Deployment identity: which dockrq deployment a container belongs to.

Several dockrq deployments (each one Redis + key prefix) may share a Docker
daemon. Every container a worker creates carries ``dockrq.deployment=<id>``,
so a reaper can tell *this deployment's container whose execution Redis has
forgotten* (Redis restarted without persistence, keys expired) -- removed after
the orphan grace by the ``worker.faults.forgotten`` sweep -- from *another
deployment's container*, which it never touches.

The id is ``DOCKRQ_DEPLOYMENT`` when set; otherwise it is derived from what
names the deployment's data: the key prefix and where Redis keeps it
(``host:port/db``, the unix socket, or the Sentinel service and db: see
``schemas.redis_url.redis_location``), e.g. ``dockrq-3f9c2a1b7e``. Hosts that
reach the same Redis under different names (an IP here, a DNS name there)
derive different ids: set ``DOCKRQ_DEPLOYMENT`` to one value on all of them.
"""

from __future__ import annotations

import hashlib
import re

from schemas.redis_url import redis_location

LABEL_DEPLOYMENT = "dockrq.deployment"
DEPLOYMENT_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def default_deployment(prefix: str, redis_url: str) -> str:
    """``<prefix>-<10 hex digits>`` from the prefix and the Redis location (never the credentials)."""
    try:
        location = redis_location(redis_url)
    except ValueError:
        location = redis_url  # refused later, with a clear message, when a client is made from it
    digest = hashlib.sha1(f"{prefix}@{location}".encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('-', prefix)[:100]}-{digest}"
