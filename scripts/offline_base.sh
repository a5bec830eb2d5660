#!/usr/bin/env bash
# Build dockrq-test/python-offline: a stand-in for python:3.11-slim and
# redis:7-alpine on a machine that reaches Debian's mirror and PyPI but no image
# registry. It lets the Dockerfile and docker-compose.yml be built and run for
# real (tests/integration/test_compose_up.py):
#
#   DOCKRQ_PYTHON_IMAGE=dockrq-test/python-offline DOCKRQ_REDIS_IMAGE=dockrq-test/python-offline \
#     docker-compose up -d --build --scale worker=4
#
# The image is Debian bookworm from debootstrap with python3 and redis-server,
# plus a virtualenv on PATH that already holds every dependency of dockrq
# (wheels fetched on the host, where PyPI is reachable). PIP_NO_INDEX and
# PIP_FIND_LINKS (setuptools for the build) make the Dockerfile's `pip install`
# use only what is in the image.
#
# Idempotent: an image whose label matches pyproject.toml is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${1:-dockrq-test/python-offline:latest}"
SUITE="${DOCKRQ_DEBIAN_SUITE:-bookworm}"
MIRROR="${DOCKRQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PIP="$ROOT/.venv/bin/pip"

say() { echo "[offline-base] $*"; }

deps_key="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [ "$(docker image inspect -f '{{ index .Config.Labels "dockrq.deps" }}' "$IMAGE" 2>/dev/null)" = "$deps_key" ]; then
  say "$IMAGE is up to date"
  exit 0
fi

command -v debootstrap >/dev/null || {
  say "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
}
[ -x "$PIP" ] || { echo "[offline-base] $PIP missing: run scripts/setup.sh first" >&2; exit 1; }

work="$(mktemp -d /tmp/dockrq-offline-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

say "debootstrap $SUITE (python3, redis-server) from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,redis-server,redis-tools \
  "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}

say "fetching dockrq's dependencies as wheels"
mkdir -p "$rootfs/tmp/wheels"
# async-timeout: redis needs it on bookworm's Python 3.11.2, not on the host's newer one.
"$PIP" wheel -q --wheel-dir "$rootfs/tmp/wheels" "$ROOT[dashboard]" "setuptools>=77" wheel async-timeout \
  >"$work/pip.log" 2>&1 || { grep -v '^WARNING: Location' "$work/pip.log" | tail -20 >&2; exit 1; }
rm -f "$rootfs"/tmp/wheels/dockrq-*.whl

say "installing them into /opt/venv"
in_rootfs() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$rootfs" "$@"; }
in_rootfs python3 -m venv /opt/venv
in_rootfs sh -c '/opt/venv/bin/pip install -q --no-index --disable-pip-version-check /tmp/wheels/*.whl'
# Building dockrq itself needs setuptools in pip's isolated build environment.
mkdir -p "$rootfs/opt/wheels"
mv "$rootfs"/tmp/wheels/setuptools-*.whl "$rootfs"/tmp/wheels/wheel-*.whl "$rootfs/opt/wheels/"
rm -rf "$rootfs/tmp/wheels" "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

say "importing $IMAGE"
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/wheels' \
  --change 'WORKDIR /' \
  --change "LABEL dockrq.deps=$deps_key" \
  - "$IMAGE" >/dev/null
say "built $IMAGE"
