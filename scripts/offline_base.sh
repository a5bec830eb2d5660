#!/usr/bin/env bash
# Build dockrq-test/python-offline: a stand-in for python:3.11-slim and
# redis:7-alpine on a machine that reaches Debian's mirror and PyPI but no image
# registry. It lets the Dockerfile and docker-compose.yml be built and run for
# real (tests/integration/test_compose_up.py):
#
#   DOCKRQ_PYTHON_IMAGE=dockrq-test/python-offline DOCKRQ_REDIS_IMAGE=dockrq-test/python-offline \
#     docker-compose up -d --build --scale worker=4
#
# The image is Debian (DOCKRQ_DEBIAN_SUITE, default bookworm) from debootstrap
# with python3 and redis-server, plus a virtualenv on PATH that already holds
# every dependency of dockrq. The wheels are fetched on the host, where PyPI is
# reachable, but for the image's interpreter: its version and wheel tags are read
# from the rootfs, so the host's Python does not matter. PIP_NO_INDEX and
# PIP_FIND_LINKS (setuptools for the build) make the Dockerfile's `pip install`
# use only what is in the image.
#
# Needs root (debootstrap, chroot) to build. Idempotent: an image whose label
# matches pyproject.toml, this script, the suite, the mirror and the machine is
# kept; a rebuilt image replaces the previous one, which is removed. Concurrent
# runs wait for each other.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${1:-dockrq-test/python-offline:latest}"
SUITE="${DOCKRQ_DEBIAN_SUITE:-bookworm}"
MIRROR="${DOCKRQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Any Python with pip fetches the wheels; it need not match the image's.
HOST_PYTHON="${DOCKRQ_HOST_PYTHON:-$ROOT/.venv/bin/python}"
LOCK="/run/lock/dockrq-offline-base.lock"

say() { echo "[offline-base] $*"; }
die() { echo "[offline-base] $*" >&2; exit 1; }

# The image's Python comes from SUITE and MIRROR, so they stand for it here (it
# is known only after debootstrap; the image records it as dockrq.python).
deps_key="$(
  { cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}"; echo "$SUITE $MIRROR $(uname -m)"; } | sha256sum | cut -c1-16
)"
up_to_date() {
  [ "$(docker image inspect -f '{{ index .Config.Labels "dockrq.deps" }}' "$IMAGE" 2>/dev/null)" = "$deps_key" ]
}
if up_to_date; then
  say "$IMAGE is up to date"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "building $IMAGE needs root (debootstrap and chroot); run as root"
[ -x "$HOST_PYTHON" ] || die "$HOST_PYTHON missing: run scripts/setup.sh first"

exec 9>"$LOCK"
if ! flock -n 9; then
  say "waiting for another run (lock $LOCK)"
  flock 9
fi
if up_to_date; then  # built by the run we waited for
  say "$IMAGE is up to date"
  exit 0
fi

work=""
cleanup() {
  trap - EXIT INT TERM
  [ -n "$work" ] && [ -d "$work" ] || return 0
  # debootstrap mounts proc and sys (in a container, /dev too) inside the rootfs: a run
  # that stops half-way leaves them mounted. Deepest first; lazily if busy.
  local mnt
  findmnt -rn -o TARGET | awk -v p="$work/" 'index($0, p) == 1' | sort -r | while read -r mnt; do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" || echo "[offline-base] could not unmount $mnt" >&2
  done
  # Never follow a mount that is somehow still there (a bind-mounted /dev above all).
  rm -rf --one-file-system "$work" || echo "[offline-base] could not remove $work" >&2
}
trap cleanup EXIT
trap 'exit 130' INT  # exit runs cleanup through the EXIT trap
trap 'exit 143' TERM

command -v debootstrap >/dev/null || {
  say "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q debootstrap >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q debootstrap >/dev/null
  }
}

work="$(mktemp -d /tmp/dockrq-offline-base.XXXXXX)"
rootfs="$work/rootfs"
in_rootfs() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$rootfs" "$@"; }

say "debootstrap $SUITE (python3, redis-server) from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,redis-server,redis-tools \
  "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}
in_rootfs python3 -m venv /opt/venv

# The wheel tags the image's interpreter accepts, from its own pip.
target_out="$(in_rootfs /opt/venv/bin/python -c '
import platform
from pip._vendor.packaging.tags import interpreter_name, sys_tags
tags = list(sys_tags())
print(platform.python_version(), f"--implementation={interpreter_name()}",
      *sorted({f"--abi={t.abi}" for t in tags} | {f"--platform={t.platform}" for t in tags}))
')"
read -r py_version py_tags <<<"$target_out"
[ -n "${py_tags:-}" ] || die "could not read the wheel tags of $SUITE's python3"
# shellcheck disable=SC2206  # one --kind=value word each
target=(--only-binary=:all: --python-version "$py_version" $py_tags)

say "fetching dockrq's dependencies as wheels for Python $py_version"
wheels="$rootfs/tmp/wheels"
mkdir -p "$wheels" "$work/built"
"$HOST_PYTHON" -c '
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(*project["dependencies"], *project["optional-dependencies"]["dashboard"], sep="\n")
' "$ROOT/pyproject.toml" >"$wheels/requirements.txt"
# pip evaluates markers for the host, not the target: redis needs async-timeout on
# Python < 3.11.3 (bookworm's is 3.11.2). The install in the rootfs below resolves
# for the image's Python, so anything else missing fails there, not at docker build.
echo async-timeout >>"$wheels/requirements.txt"
# setuptools and wheel build dockrq itself (pip's isolated build environment).
build_reqs=("setuptools>=77" wheel)
host_pip() { "$HOST_PYTHON" -m pip --disable-pip-version-check "$@" >>"$work/pip.log" 2>&1; }
pip_failed() { grep -v '^WARNING: Location' "$work/pip.log" | tail -20 >&2; exit 1; }
built_names=" "
until host_pip download -q "${target[@]}" --find-links "$work/built" --dest "$wheels" \
    -r "$wheels/requirements.txt" "${build_reqs[@]}"; do
  # A dependency with no wheel at all: build just that one from its sdist (pure Python
  # gives a py3-none-any wheel; one with C code would not match the tags, and fails here).
  spec="$(sed -n 's/.*No matching distribution found for \([^;]*\).*/\1/p' "$work/pip.log" | tail -1)"
  missing="$(echo "$spec" | sed 's/^\([A-Za-z0-9._-]*\).*/\1/')"
  [ -n "$missing" ] || pip_failed
  case "$built_names" in *" $missing "*) pip_failed ;; esac
  say "no wheel for $spec: building it from its sdist"
  host_pip wheel -q --no-deps --no-binary "$missing" --wheel-dir "$work/built" "$spec" || pip_failed
  built_names+="$missing "
done

say "installing them into /opt/venv"
in_rootfs /opt/venv/bin/pip install -q --no-index --disable-pip-version-check \
  --find-links /tmp/wheels -r /tmp/wheels/requirements.txt
check="$(in_rootfs /opt/venv/bin/pip check --disable-pip-version-check)" || die "$check"
mkdir -p "$rootfs/opt/wheels"
mv "$wheels"/setuptools-*.whl "$wheels"/wheel-*.whl "$rootfs/opt/wheels/"
rm -rf "$wheels" "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

previous="$(docker image inspect -f '{{ .Id }}' "$IMAGE" 2>/dev/null || true)"
say "importing $IMAGE"
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/wheels' \
  --change 'WORKDIR /' \
  --change "LABEL dockrq.deps=$deps_key dockrq.python=$py_version dockrq.suite=$SUITE" \
  - "$IMAGE" >/dev/null
current="$(docker image inspect -f '{{ .Id }}' "$IMAGE")"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  # The tag moved: the image it named is dangling now (a whole Debian). Kept if in use.
  short="${previous#sha256:}" && short="${short:0:12}"
  docker rmi "$previous" >/dev/null 2>&1 && say "removed the previous image $short" ||
    say "kept the previous image $short: still in use"
fi
say "built $IMAGE (Python $py_version)"
