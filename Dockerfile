# dockrq: one image for the worker, the producer CLI and rq-dashboard.
#
#   docker build -t dockrq .
#   docker run --rm -v /var/run/docker.sock:/var/run/docker.sock \
#     -e DOCKRQ_REDIS_URL=redis://redis-host:6379/0 dockrq            # a worker
#   docker run --rm -e DOCKRQ_REDIS_URL=... dockrq dockrq submit busybox echo hi
#
# The worker starts containers on the daemon whose socket is mounted, so those
# are siblings of the worker's container, not children.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/dockrq
# Metadata first so the dependency layer is reused when only code changes.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY worker ./worker
COPY producer ./producer
COPY dockrq_entry.py ./
RUN pip install ".[dashboard]" \
 && useradd --system --no-create-home --shell /usr/sbin/nologin dockrq

# Non-root by default (producer CLI, dashboard). The worker needs the Docker
# socket, which is root-equivalent anyway: docker-compose.yml runs it as root.
USER dockrq
CMD ["dockrq-worker"]
