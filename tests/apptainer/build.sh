#!/bin/bash
# Build (once, cached) what the hither_fs test suite needs for REAL Apptainer
# runs on a Debian bookworm host without an apptainer package:
#
#   $CACHE/sid-root                 Debian sid root with apptainer installed
#   $CACHE/images/bookworm-numpy    test image, sandbox dir (python3 + numpy)
#   $CACHE/bin/singularity          wrapper: bwrap + sid root + apptainer
#   $CACHE/bin/apptainer            same script
#
# CACHE is $HITHER_FS_TEST_CACHE, default /var/tmp/hither_fs-test.
# Run as root. Idempotent: whatever already exists is kept; every tree is
# built in a temp dir and renamed into place only when complete. Needs the
# Debian package mirror (mmdebstrap picks its default one).
#
# Tests then run as an UNPRIVILEGED user with "$CACHE/bin" first on PATH.
set -euo pipefail
umask 022

CACHE=${HITHER_FS_TEST_CACHE:-/var/tmp/hither_fs-test}
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
SID_SUITE=sid
IMAGE_SUITE=bookworm
IMAGE_PACKAGES=python3-minimal,python3-numpy

log() { echo "[hither_fs apptainer build] $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

# --- tools -----------------------------------------------------------------
if ! command -v mmdebstrap >/dev/null || ! command -v bwrap >/dev/null; then
    log "installing mmdebstrap and bubblewrap"
    apt-get -o DPkg::Lock::Timeout=600 update
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y mmdebstrap bubblewrap
fi

mkdir -p "$CACHE" "$CACHE/images" "$CACHE/bin"
chmod 755 "$CACHE" "$CACHE/images" "$CACHE/bin"

# One build at a time; then leftovers of interrupted builds can go. mmdebstrap
# (root mode) mounts proc/sys/dev nodes inside its target while it runs, and a
# build killed hard may leave them: unmount first, never cross into a mount.
exec 9>"$CACHE/.build.lock"
flock 9
for stale in "$CACHE"/.tmp-* "$CACHE"/images/.tmp-*; do
    [ -e "$stale" ] || continue
    log "removing leftover of an interrupted build: $stale"
    awk -v p="$stale/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l -- "$m" || true; done
    rm -rf --one-file-system -- "$stale"
done

# build_tree DEST MMDEBSTRAP_ARGS...: build DEST unless it exists.
build_tree() {
    local dest=$1; shift
    if [ -d "$dest" ]; then
        log "exists, skipping: $dest"
        return 0
    fi
    local tmp t0
    tmp="$(dirname -- "$dest")/.tmp-$(basename -- "$dest").$$"
    log "building $dest"
    t0=$(date +%s.%N)
    mmdebstrap "$@" "$tmp"
    post_"$(basename -- "$dest" | tr -c 'a-zA-Z0-9\n' _)" "$tmp"
    chmod 755 "$tmp"
    mv -T -- "$tmp" "$dest"
    log "built $dest in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
}

# Mount points the wrapper binds host files onto (bwrap cannot create them in
# a root-owned tree when run unprivileged).
post_sid_root() {
    local r=$1 f
    for f in etc/hosts etc/localtime etc/resolv.conf; do
        if [ -L "$r/$f" ] || [ ! -e "$r/$f" ]; then
            rm -f -- "$r/$f"
            : >"$r/$f"
        fi
    done
    test -x "$r/usr/bin/apptainer"
}

post_bookworm_numpy() {
    local r=$1
    test -x "$r/usr/bin/python3"
    # Test image only. An unprivileged user must be able to copy the sandbox
    # (apptainer build --sandbox NEW OLD, or tar it into an OCI layout):
    # drop the device nodes mmdebstrap made in /dev (mknod is not permitted;
    # Apptainer binds /dev anyway) and make every file readable.
    find "$r/dev" -mindepth 1 \( -type b -o -type c -o -type p -o -type s \) -delete
    chmod -R a+rX -- "$r"
}

build_tree "$CACHE/sid-root" --variant=apt \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --include=apptainer "$SID_SUITE"

build_tree "$CACHE/images/bookworm-numpy" --variant=apt \
    --include="$IMAGE_PACKAGES" "$IMAGE_SUITE"

# Empty mount points in the sid root for every top-level host dir it lacks
# (e.g. /work, /data; also top-level symlinks to dirs), so the wrapper can
# bind job dirs below them. Redone on every run; harmless on an existing tree.
for d in /*/; do
    d=${d%/}
    case "$d" in /proc | /sys | /dev | /root | /lost+found) continue ;; esac
    [ -e "$CACHE/sid-root$d" ] || [ -L "$CACHE/sid-root$d" ] || mkdir -m 755 -- "$CACHE/sid-root$d"
done

# Wrapper (always refreshed from the repo copy).
for name in singularity apptainer; do
    install -m 755 -- "$HERE/singularity" "$CACHE/bin/.$name.$$"
    mv -f -- "$CACHE/bin/.$name.$$" "$CACHE/bin/$name"
done

log "ready: export PATH=$CACHE/bin:\$PATH (as an unprivileged user)"
log "image: $CACHE/images/bookworm-numpy"
