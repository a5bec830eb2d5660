#!/usr/bin/env bash
# Idempotent machine setup for dockrq on Debian (run as root): installs what is
# missing, starts dockerd and redis-server when none answers, builds the venv and
# the local test image. A second run changes nothing and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REDIS_PORT=${DOCKRQ_REDIS_PORT:-6379}
log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v redis-server >/dev/null || need+=(redis-server)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v openssl >/dev/null || need+=(openssl)
command -v debootstrap >/dev/null || need+=(debootstrap)  # scripts/offline_base.sh (compose test)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)  # scripts/sentinel_group.py (failover test)
command -v ip >/dev/null || need+=(iproute2)  # scripts/docker_node.py: lo up in the node's network namespace
command -v unshare >/dev/null || need+=(util-linux)  # scripts/docker_node.py: the node's own network namespace
command -v docker-registry >/dev/null || need+=(docker-registry)  # loopback registries of the suite/bench (scripts/registry.py)
command -v htpasswd >/dev/null || need+=(apache2-utils)           # the private one's bcrypt htpasswd file
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null
fi
# Observability tests: a real Prometheus scrapes a worker, a real headless browser reads the
# dashboard. No recommends: prometheus would pull in its node exporter (a running daemon) too.
extra=()
command -v prometheus >/dev/null || extra+=(prometheus)
command -v chromium >/dev/null || extra+=(chromium)
command -v chromedriver >/dev/null || extra+=(chromium-driver)
if [ ${#extra[@]} -gt 0 ]; then
  log "installing ${extra[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${extra[@]}" >/dev/null
fi

# --- dockerd ---------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  # its own session: killing the shell, job or process group that ran setup.sh must not take
  # the machine's daemon with it (nohup only ignores SIGHUP)
  setsid nohup dockerd >/var/log/dockrq-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/dockrq-dockerd.log"; exit 1; }
fi

# --- redis-server ----------------------------------------------------------
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  log "starting redis-server on port $REDIS_PORT"
  redis-server --daemonize yes --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --logfile /var/log/dockrq-redis.log
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# --- Python venv -----------------------------------------------------------
stamp=.venv/.setup-stamp
# compat: a plain path entry in a .pth file. The default editable finder imports pathlib, re and
# importlib.util inside `site` of every Python process (about 20 ms each, and a Ctrl-C then is
# CPython's "Fatal Python error: init_import_site", outside any handler of ours).
editable_mode=compat
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $editable_mode"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing the project into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  # pip's output is noise when it works; shown in full when it does not
  if ! .venv/bin/pip install -q -e '.[test,dashboard]' --config-settings editable_mode=$editable_mode >.venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
# Every worker and CLI process imports the project's modules: compiled once here, read from
# __pycache__ after (with PYTHONDONTWRITEBYTECODE set, each process would compile them again).
.venv/bin/python -m compileall -q producer schemas worker >/dev/null

# --- local test image (no registry needed) ---------------------------------
IMAGE=${DOCKRQ_TEST_IMAGE:-dockrq-test/busybox:latest}
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "building $IMAGE"
  ctx=$(mktemp -d)
  cp /bin/busybox "$ctx/busybox"
  cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
# busybox --list names busybox itself: skip it so the binary is not linked onto itself
RUN ["/bin/busybox", "sh", "-c", "for a in $(/bin/busybox --list); do [ \"$a\" = busybox ] || /bin/busybox ln -s busybox /bin/$a; done; /bin/busybox mkdir -p /tmp /etc /root && /bin/busybox chmod 1777 /tmp"]
ENV PATH=/bin
CMD ["sh"]
DOCKERFILE
  docker build -q -t "$IMAGE" "$ctx" >/dev/null 2>"$ctx/build.log" || { cat "$ctx/build.log" >&2; exit 1; }
  rm -rf "$ctx"
fi

# Registries: setup.sh only installs docker-registry and apache2-utils (htpasswd) above and
# starts none. The suite's session fixture (tests/integration/conftest.py) and scripts/bench.py
# start their own through scripts/registry.py, on free loopback ports, and stop them after.

log "ready: docker $(docker version -f '{{.Server.Version}}'), redis on :$REDIS_PORT, image $IMAGE"
