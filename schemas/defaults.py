"""Defaults and id patterns of the wire contract that need neither pydantic nor redis-py.

The ``dockrq`` CLI shows them in its ``--help`` and checks ids with them before anything
is imported for talking to Redis (README, "Start-up"). Their former homes re-export them
(``schemas.wire.DEFAULT_PREFIX``, ``schemas.connections.DEFAULT_REDIS_URL``...), and so
does ``schemas``.
"""

DEFAULT_PREFIX = "dockrq"  # the key prefix P of every key (README, Redis contract)
DEFAULT_QUEUE = "dockrq"  # the rq queue name
DEFAULT_RETENTION_SECONDS = 24 * 3600  # how long outcomes, flags and claims are kept
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Seconds the first reads of a call keep retrying a Redis that has not answered yet
#: (DOCKRQ_REDIS_RETRY_SECONDS; producer.reaching).
DEFAULT_REDIS_RETRY_SECONDS = 30.0
EXECUTION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# Input given to the container on its stdin (``docker run -i``), at most this many bytes: it
# travels inside the request, which is at most 1 MiB of JSON by default (base64 adds a third).
MAX_STDIN_BYTES = 512 * 1024
DEFAULT_MAX_INPUT_BYTES = 16 * 1024 * 1024  # producer's and worker's bound on input file contents
