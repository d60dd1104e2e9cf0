#!/usr/bin/env bash
# The whole hither_fs test suite, from a fresh Debian/Ubuntu machine:
#
#   sudo tests/run.sh [pytest arguments]
#
# 1. installs the system packages the tests use (Slurm, munge, bindfs, fuse3,
#    mmdebstrap, bubblewrap, python3-venv, faketime, docker.io, chromium) if they are missing;
# 2. builds (once, cached) the Debian sid root that provides real Apptainer and
#    the test image (tests/apptainer/build.sh); starts the Docker daemon if none
#    answers (and stops it again at the end) and imports the test image into it
#    as hither-fs-test/bookworm-numpy;
# 3. copies this checkout and makes a virtualenv for an unprivileged test user
#    (Apptainer refuses to run as root here, and real cluster users are not
#    root either);
# 4. starts the throwaway local Slurm cluster (slurm/cluster.sh), by default
#    with 3 nodes that see the shared directory through mounts of their own,
#    and stops it again at the end;
# 5. runs pytest as that user;
# 6. creates three users (hither-a and hither-b in group hither-lab, hither-c) and runs
#    tests/test_lab.py as root, acting as each of them. The exit code is 0 only if
#    both runs pass.
#
# Settings: HITHER_FS_TEST_CACHE (default /var/tmp/hither_fs-test) holds the
# cached builds, the copy and the virtualenv; HITHER_FS_TEST_USER (default
# hithertest) is the user the tests run as; HITHER_FS_TEST_TIMEOUT (default 45m)
# bounds the pytest run, so a hung test fails the run instead of stalling it;
# HITHER_FS_SLURM_DIR, HITHER_FS_SLURM_PORT, HITHER_FS_SLURM_NODES,
# HITHER_FS_SLURM_CPUS (per node) and HITHER_FS_SHARED_DIR (default
# /tmp/hither_fs-slurm-tests, 6817, 3, 4, /tmp/hither_fs-shared-tests) place the
# test cluster; pytest gets HITHER_FS_SHARED_DIR (unless there is only one
# node) and SLURM_CONF. Two runs at once on one machine need their own cache,
# user, Slurm directory, port and shared directory.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${HITHER_FS_TEST_CACHE:-/var/tmp/hither_fs-test}
TEST_USER=${HITHER_FS_TEST_USER:-hithertest}
export HITHER_FS_SLURM_DIR=${HITHER_FS_SLURM_DIR:-/tmp/hither_fs-slurm-tests}
export HITHER_FS_SLURM_NODES=${HITHER_FS_SLURM_NODES:-3}
export HITHER_FS_SLURM_CPUS=${HITHER_FS_SLURM_CPUS:-4}
export HITHER_FS_SHARED_DIR=${HITHER_FS_SHARED_DIR:-/tmp/hither_fs-shared-tests}

say() { echo "[tests/run.sh] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    exec sudo --preserve-env=HITHER_FS_TEST_CACHE,HITHER_FS_TEST_USER,HITHER_FS_TEST_TIMEOUT,HITHER_FS_SLURM_DIR,HITHER_FS_SLURM_PORT,HITHER_FS_SLURM_NODES,HITHER_FS_SLURM_CPUS,HITHER_FS_SHARED_DIR,CI "$0" "$@"
fi

# 1. system packages --------------------------------------------------------
packages=(slurm-wlm munge bindfs fuse3 mmdebstrap bubblewrap python3-venv faketime docker.io chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. real Apptainer and the test image ----------------------------------------
HITHER_FS_TEST_CACHE=$CACHE "$REPO/tests/apptainer/build.sh"

# 2b. a real Docker daemon, with the test image ----------------------------------------
# (stopped on exit only if this script started it; see the trap below)
cleanup() {
    "$REPO/slurm/cluster.sh" stop >/dev/null 2>&1 || true
    if [ -n "${started_dockerd:-}" ]; then
        kill "$started_dockerd" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.1; done
    fi
}
trap cleanup EXIT
started_dockerd=
if ! /usr/bin/docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $CACHE/dockerd.log)"
    /usr/sbin/dockerd >"$CACHE/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 1 120); do
        /usr/bin/docker info >/dev/null 2>&1 && break
        kill -0 "$started_dockerd" 2>/dev/null || { say "dockerd exited:"; tail -20 "$CACHE/dockerd.log" >&2; break; }
        sleep 0.5
    done
fi
DOCKER_IMAGE=hither-fs-test/bookworm-numpy:latest
if /usr/bin/docker info >/dev/null 2>&1 && ! /usr/bin/docker image inspect "$DOCKER_IMAGE" >/dev/null 2>&1; then
    say "importing $CACHE/images/bookworm-numpy into Docker as $DOCKER_IMAGE"
    tar -C "$CACHE/images/bookworm-numpy" -cf - . | /usr/bin/docker import - "$DOCKER_IMAGE" >/dev/null
fi

# 3. the test user, a copy of the checkout, a virtualenv --------------------------
id -u "$TEST_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$TEST_USER"
# the docker group lets the test user run containers (Docker runs them as the user's uid)
getent group docker >/dev/null && usermod -a -G docker "$TEST_USER"
TEST_HOME=$(getent passwd "$TEST_USER" | cut -d: -f6)
as_user() { runuser -u "$TEST_USER" -- "$@"; }

rm -rf "$CACHE/src"
mkdir -p "$CACHE/src"
tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$CACHE/src" -xf -
chown -R "$TEST_USER:" "$CACHE/src"
if [ ! -x "$CACHE/venv/bin/python" ]; then
    install -d -o "$TEST_USER" "$CACHE/venv"
    as_user /usr/bin/python3 -m venv "$CACHE/venv"
fi
say "installing hither_fs into $CACHE/venv"
# compat: a plain path entry, which mypy follows (tests/test_typing.py), instead of an import hook
(cd "$CACHE/src" && as_user "$CACHE/venv/bin/pip" install -q --disable-pip-version-check -e ".[test]" \
    --config-settings editable_mode=compat)

# 4. the local Slurm cluster (stopped on any exit, even a failed start: see cleanup) ----------
"$REPO/slurm/cluster.sh" start >/dev/null
# `env` says whether the cluster has a shared directory (not with one node).
unset HITHER_FS_SHARED_DIR
eval "$("$REPO/slurm/cluster.sh" env)"
cluster_env=(SLURM_CONF="$SLURM_CONF")
if [ -n "${HITHER_FS_SHARED_DIR:-}" ]; then
    cluster_env+=(HITHER_FS_SHARED_DIR="$HITHER_FS_SHARED_DIR")
fi

# 5. pytest, as the test user, with a clean environment ---------------------------------
say "running pytest as $TEST_USER"
cd "$CACHE/src"
set +e
timeout --kill-after=30 "${HITHER_FS_TEST_TIMEOUT:-45m}" runuser -u "$TEST_USER" -- env -i \
    HOME="$TEST_HOME" USER="$TEST_USER" LANG=C.UTF-8 \
    PATH="$CACHE/bin:$CACHE/venv/bin:/usr/local/bin:/usr/bin:/bin" \
    "${cluster_env[@]}" HITHER_FS_TEST_CACHE="$CACHE" CI="${CI:-1}" \
    "$CACHE/venv/bin/python" -m pytest -p no:cacheprovider --ignore=tests/test_lab.py "$@"
status=$?
set -e

# 6. a root a lab shares: three real users, run as root (tests/test_lab.py) -----------------
# hither-a and hither-b in group hither-lab, hither-c outside it; hither_fs installed for them
# in a virtualenv the superuser owns (a worker runs no code that others than the job's
# submitter, itself or the root's group could change - hither_fs's own files included).
run_lab=1
for arg in "$@"; do
    case "$arg" in
        tests/test_lab.py*) run_lab=1; break ;;
        tests|tests/) ;;
        tests/*|*.py|*::*) run_lab=0 ;;
    esac
done
if [ "$run_lab" = 1 ]; then
    getent group hither-lab >/dev/null || groupadd hither-lab
    for u in hither-a hither-b hither-c; do
        # -U: each user gets a group of its own (user-private groups), as on Debian, Ubuntu and RHEL
        id -u "$u" >/dev/null 2>&1 || useradd -U --create-home --shell /bin/bash "$u"
    done
    usermod -a -G hither-lab hither-a
    usermod -a -G hither-lab hither-b
    gpasswd -d hither-c hither-lab >/dev/null 2>&1 || true
    # root runs this part: from a copy of the checkout root owns (the test user could change $CACHE/src)
    rm -rf "$CACHE/lab-src"
    mkdir -p "$CACHE/lab-src"
    tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude='*.egg-info' --exclude=__pycache__ -cf - . |
        tar -C "$CACHE/lab-src" --no-same-owner -xf -
    chmod -R go-w "$CACHE/lab-src"
    if [ ! -x "$CACHE/lab-venv/bin/python" ]; then
        /usr/bin/python3 -m venv "$CACHE/lab-venv"
        "$CACHE/lab-venv/bin/pip" install -q --disable-pip-version-check pytest
    fi
    "$CACHE/lab-venv/bin/pip" install -q --disable-pip-version-check "$CACHE/lab-src" >/dev/null
    "$CACHE/lab-venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$CACHE/lab-src" \
        >/dev/null
    chmod -R go-w "$CACHE/lab-venv"
    say "running tests/test_lab.py as root, acting as hither-a, hither-b and hither-c"
    cd "$CACHE/lab-src"
    set +e
    timeout --kill-after=30 10m env -i HOME=/root LANG=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HITHER_FS_LAB_PYTHON="$CACHE/lab-venv/bin/python" CI="${CI:-1}" \
        "$CACHE/lab-venv/bin/python" -m pytest -p no:cacheprovider -q tests/test_lab.py
    lab_status=$?
    set -e
    # 5: the first run had nothing to collect (only tests/test_lab.py was asked for)
    [ "$status" = 0 ] || [ "$status" = 5 ] && status=$lab_status
fi
exit $status
