#!/usr/bin/env bash
# A throwaway Slurm cluster on this one machine, for hither_fs tests and for
# trying hither_fs on a laptop.  Debian/Ubuntu only (uses apt packages).
#
# By default it has one node, "localhost".  With HITHER_FS_SLURM_NODES=N (N >= 2)
# it has nodes node1..nodeN, one slurmd each, and every node behaves like a
# separate machine as far as hither_fs can tell: its slurmd (and so every job
# on it) runs in a mount and UTS namespace of its own, `hostname` says nodeK,
# and it sees the shared directory HITHER_FS_SHARED_DIR through its own FUSE
# (bindfs) mount of one backing directory, as cluster nodes see an NFS export:
#   - file locks (flock and fcntl alike) do not cross mounts: a lock taken on
#     one node does not exclude a process on another node (as with NFS mounted
#     with local_lock=all or nolock), while it does on the same node;
#   - each node caches attributes, names and missing names for
#     NODE_CACHE_TIMEOUT (1 s), so for up to a second a node may see a stale
#     size or mtime, miss a file another node just created or still see one it
#     just deleted.
# The host ("login node", where sbatch and tests run) sees the same directory
# at the same path through a mount of its own, with libfuse's default caching
# (attributes and names 1 s, missing names not cached).
#
# Usage:
#   sudo slurm/cluster.sh install   # apt-get install slurm-wlm, munge, bindfs, fuse3 (once)
#   sudo slurm/cluster.sh start     # start munged, slurmctld, the slurmd's (and the
#                                   # shared directory mounts); wait for all nodes idle
#   eval "$(slurm/cluster.sh env)"  # point sbatch/squeue/... at this cluster
#   slurm/cluster.sh status         # show daemons, mounts, sinfo and squeue
#   sudo slurm/cluster.sh stop      # cancel jobs, stop daemons, unmount, delete all state
#
# Environment:
#   HITHER_FS_SLURM_DIR    state directory (default: ${TMPDIR:-/tmp}/hither_fs-slurm).
#                          Everything lives here: munge key and socket,
#                          slurm.conf, spool dirs, logs, pid files, and the
#                          contents of the shared directory.  The system's
#                          /etc/munge and /etc/slurm are never used.
#   HITHER_FS_SLURM_NODES  number of nodes (default 1).  1: one node called
#                          localhost, no namespaces, no FUSE.  N >= 2: nodes
#                          node1..nodeN as described above.
#   HITHER_FS_SLURM_CPUS   CPU count advertised for EACH node (default: nproc).
#                          Set it higher than the real core count (e.g. 8) so
#                          that several allocations can run at the same time.
#                          Memory is advertised likewise: every node offers
#                          90% of this machine's MemTotal.
#   HITHER_FS_SLURM_PORT   slurmctld port (default 6817); the slurmd of the only
#                          node uses PORT+1, that of node K uses PORT+K.  Change
#                          it if a real Slurm already runs on this host.
#   HITHER_FS_SLURM_START_TIMEOUT  seconds to wait for the nodes (default 60).
#   HITHER_FS_SHARED_DIR   where the shared directory appears, on the host and
#                          on every node (default: ${TMPDIR:-/tmp}/hither_fs-shared).
#                          Only used with 2 or more nodes.  It must be empty or
#                          absent; stop removes it again if start created it.
#
# The daemons run as root (slurmd must be root to run jobs as other users), so
# install/start/stop need root.  Jobs can be submitted by any user, and any user
# can create files in the shared directory (it is world-writable and sticky,
# like /tmp).  sudo drops most environment variables: pass settings explicitly,
# e.g.
#   sudo env HITHER_FS_SLURM_NODES=3 HITHER_FS_SLURM_CPUS=4 slurm/cluster.sh start
# and use the same HITHER_FS_SLURM_DIR/TMPDIR for `env` as for `start` (`env`,
# `status` and `stop` take the node count and shared directory from the state
# directory).
set -euo pipefail

SELF=$(readlink -f -- "${BASH_SOURCE[0]}")
STATE_DIR="${HITHER_FS_SLURM_DIR:-${TMPDIR:-/tmp}/hither_fs-slurm}"
NODES="${HITHER_FS_SLURM_NODES:-1}"
CPUS="${HITHER_FS_SLURM_CPUS:-$(nproc)}"
CTLD_PORT="${HITHER_FS_SLURM_PORT:-6817}"
SLURMD_PORT=$((CTLD_PORT + 1))
START_TIMEOUT="${HITHER_FS_SLURM_START_TIMEOUT:-60}"
SHARED_DIR="${HITHER_FS_SHARED_DIR:-${TMPDIR:-/tmp}/hither_fs-shared}"
CTLD_HOST=localhost
NODE=localhost       # slurmd is told its name with -N, so the real hostname does not matter
PARTITION=debug
# Seconds for which a node's mount of the shared directory trusts what it has
# seen: attributes (attr_timeout), names found (entry_timeout) and names not
# found (negative_timeout).  Small, like the attribute cache of an NFS client:
# long enough that code assuming one node's write is at once visible on
# another can fail in tests, short enough that waiting it out stays cheap.
NODE_CACHE_TIMEOUT=1

SLURM_CONF_FILE="$STATE_DIR/slurm.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
# The real contents of the shared directory (multi-node clusters only).  Inside
# the state dir, so that stop deletes them with everything else.
BACKING_DIR="$STATE_DIR/shared"
# What start was asked for (node count, shared dir), so that env, status and
# stop work without the variables and cannot disagree with the running cluster.
CLUSTER_FILE="$STATE_DIR/cluster"
# Marker file: `stop` only deletes a directory that `start` created, so a
# mistyped HITHER_FS_SLURM_DIR (say, $HOME) can never be wiped.
MARKER="$STATE_DIR/.hither_fs-slurm"

# Let the Slurm commands used below (sinfo, scancel, ...) find our config.
export SLURM_CONF="$SLURM_CONF_FILE"

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
    [[ $EUID -eq 0 ]] || die "'$1' must run as root (try: sudo $0 $1)"
}

# --- settings --------------------------------------------------------------

multi_node() {
    [[ $NODES =~ ^[0-9]+$ ]] && ((NODES >= 2))
}

# A value start recorded in the state dir (empty if none).
recorded() {  # <key>
    [[ -r $CLUSTER_FILE ]] || return 0
    sed -n "s/^$1=//p" "$CLUSTER_FILE" | head -n 1
}

# Use the settings of the cluster in the state dir, if there is one, instead
# of the environment's.  A state dir without the file is from a version of this
# script that only knew one node.
load_cluster_file() {
    if [[ -r $CLUSTER_FILE ]]; then
        NODES=$(recorded nodes)
        SHARED_DIR=$(recorded shared_dir)
        [[ $NODES =~ ^[1-9][0-9]*$ ]] || NODES=1
    elif [[ -e $MARKER ]]; then
        NODES=1
    fi
}

write_cluster_file() {  # <1 if start created the shared dir's mount point, else 0>
    {
        echo "nodes=$NODES"
        if multi_node; then
            echo "shared_dir=$SHARED_DIR"
            echo "shared_dir_created=$1"
        fi
    } >"$CLUSTER_FILE.tmp"
    chmod 644 "$CLUSTER_FILE.tmp"
    mv -f "$CLUSTER_FILE.tmp" "$CLUSTER_FILE"
}

describe() {
    if multi_node; then
        echo "$NODES nodes, shared dir $SHARED_DIR"
    else
        echo "1 node"
    fi
}

node_names() {  # one per line
    if multi_node; then
        seq -f 'node%g' 1 "$NODES"
    else
        echo "$NODE"
    fi
}

node_list() {  # in Slurm's hostlist syntax
    if multi_node; then
        echo "node[1-$NODES]"
    else
        echo "$NODE"
    fi
}

# Every daemon of the cluster by name.  The pid file of daemon <name> is
# $RUN_DIR/<name>.pid, and its program is <name> up to the first "-".
daemon_names() {
    local node
    echo munged
    echo slurmctld
    if multi_node; then
        for node in $(node_names); do echo "slurmd-$node"; done
        echo bindfs-host
        for node in $(node_names); do echo "bindfs-$node"; done
    else
        echo slurmd
    fi
}

# Names of the daemons whose pid files exist and match a glob, whatever the
# node count: stop must also clean up after a start with other settings.
pid_file_names() {  # <glob, e.g. 'slurmd*'>
    local f
    for f in "$RUN_DIR"/$1.pid; do
        [[ -e $f ]] && basename "$f" .pid
    done
    return 0
}

# --- process helpers -------------------------------------------------------

# True if the process exists and is not a zombie.  (In containers whose pid 1
# does not reap orphans, a dead daemon can linger as a zombie forever.)
alive() {  # <pid>
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }  # drop "pid (comm) "; the state letter comes first
    [[ ${stat:0:1} != Z ]]
}

# Print the pid recorded in a pid file if that process is alive and really is
# the expected program (guards against pid reuse after a crash).
live_pid() {  # <pidfile> <program name>
    local pid
    [[ -r $1 ]] || return 1
    pid=$(<"$1") || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
    alive "$pid" || return 1
    echo "$pid"
}

daemon_pid() {  # <daemon name>
    live_pid "$RUN_DIR/$1.pid" "${1%%-*}"
}

# True if a daemon wrote its pid file and that process is gone.  A pid file
# being written is empty for a moment, and a daemonizing process changes its
# pid: only a complete pid file naming a process that stays gone counts.
died_during_startup() {  # <daemon name>
    local file="$RUN_DIR/$1.pid" pid
    pid=$(cat "$file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    daemon_pid "$1" >/dev/null && return 1
    sleep 0.5
    pid=$(cat "$file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    ! daemon_pid "$1" >/dev/null
}

# Wait (bounded, 10 s) until none of the given pids is alive; SIGKILL those
# that still are.
wait_for_exit() {  # <pid>...
    local pid i still_running
    for ((i = 0; i < 100; i++)); do
        still_running=0
        for pid in "$@"; do
            alive "$pid" && still_running=1
        done
        ((still_running)) || return 0
        sleep 0.1
    done
    for pid in "$@"; do
        if alive "$pid"; then
            log "pid $pid did not exit after 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# SIGTERM the given daemons and wait for all of them to exit.
stop_daemons() {  # <daemon name>...
    local name pid pids=()
    for name in "$@"; do
        pid=$(daemon_pid "$name") || continue
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    done
    ((${#pids[@]})) || return 0
    wait_for_exit "${pids[@]}"
}

all_running() {
    local name
    for name in $(daemon_names); do
        daemon_pid "$name" >/dev/null || return 1
    done
}

running_count() {
    local name n=0
    for name in $(daemon_names); do
        daemon_pid "$name" >/dev/null && n=$((n + 1))
    done
    echo "$n"
}

# "<mount namespace id> <UTS namespace id>" of this process.
namespace_ids() {
    echo "$(stat -L -c %i /proc/self/ns/mnt) $(stat -L -c %i /proc/self/ns/uts)"
}

# Pids of the processes in a node's namespaces: its slurmd and bindfs, and
# every job step and job process it started, including any that outlived a
# killed slurmd.  The namespace ids were recorded when the node started; both
# must match, so a recycled id alone never does, and the host's own
# namespaces are never taken for a node's.
node_processes() {  # <node>
    local mnt uts own_ns path ino pid
    read -r mnt uts 2>/dev/null <"$RUN_DIR/ns-$1" || return 0
    own_ns=$(namespace_ids)
    [[ $mnt =~ ^[0-9]+$ && $uts =~ ^[0-9]+$ && $own_ns =~ ^[0-9]+\ [0-9]+$ ]] || return 0
    [[ $mnt != "${own_ns% *}" && $uts != "${own_ns#* }" ]] || return 0
    { stat -L -c '%n %i' /proc/[0-9]*/ns/mnt 2>/dev/null || true; } |
        while read -r path ino; do
            [[ $ino == "$mnt" ]] || continue
            pid=${path#/proc/}
            pid=${pid%%/*}
            [[ "$(stat -L -c %i "/proc/$pid/ns/uts" 2>/dev/null)" == "$uts" ]] || continue
            alive "$pid" && echo "$pid"
        done
    return 0
}

# True if node <node> has no slurmd any more.  Unlike a pid file (which slurmd
# writes only once it listens on its port), its namespace shows at once that a
# node's slurmd exited during startup, say because its port is taken.
slurmd_gone() {  # <node>
    local pid i
    for ((i = 0; i < 2; i++)); do
        ((i == 0)) || sleep 0.5
        for pid in $(node_processes "$1"); do
            [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurmd ]] && return 1
        done
    done
    return 0
}

kill_node_processes() {
    local f pids=()
    for f in "$RUN_DIR"/ns-*; do
        [[ -e $f ]] || continue
        mapfile -t -O "${#pids[@]}" pids < <(node_processes "${f#"$RUN_DIR"/ns-}")
    done
    ((${#pids[@]})) || return 0
    log "killing ${#pids[@]} leftover process(es) in the nodes' namespaces"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait_for_exit "${pids[@]}"
}

show_logs() {
    local f
    for f in "$LOG_DIR"/*.log; do
        [[ -e $f ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 25 "$f" >&2
    done
}

print_env() {
    load_cluster_file
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
    if multi_node; then
        printf 'export HITHER_FS_SHARED_DIR=%q\n' "$SHARED_DIR"
    fi
}

# --- mounts ----------------------------------------------------------------

# True if something is mounted at <dir> in this process's mount namespace.
# findmnt reads /proc/self/mountinfo and does not need to stat <dir>, so this
# also sees a FUSE mount whose daemon died ("Transport endpoint is not
# connected").
mounted() {  # <dir>
    findmnt --mountpoint "$1" >/dev/null 2>&1
}

fuse_mounted() {  # <dir>
    [[ "$(findmnt --noheadings --output FSTYPE --mountpoint "$1" 2>/dev/null)" == fuse* ]]
}

# Mount the backing dir at $SHARED_DIR with bindfs and wait until the mount is
# there.  bindfs runs in the foreground (-f) in the background, so that its
# pid is known for the pid file; setsid detaches it from the terminal, as a
# FUSE daemon exits on SIGHUP.  bindfs mounted by root with allow_other lets
# every user in, checks permissions as the kernel would (default_permissions)
# and creates files as the calling user.  Locks are not forwarded to the
# backing dir, so a lock taken through one mount is invisible through another.
start_bindfs() {  # <daemon name> <mount options>
    local name=$1 pid i
    setsid bindfs -f -o "$2" "$BACKING_DIR" "$SHARED_DIR" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
    pid=$!
    echo "$pid" >"$RUN_DIR/$name.pid"
    for ((i = 0; i < 100; i++)); do
        fuse_mounted "$SHARED_DIR" && return 0
        # alive, not daemon_pid: for a moment the child is not bindfs yet.
        alive "$pid" || break
        sleep 0.1
    done
    log "$name did not mount $SHARED_DIR"
    return 1
}

# Unmount the host's view of the shared dir, lazily if it is busy (say, a
# shell has its working directory there).  Only FUSE mounts are touched.
unmount_shared() {  # <dir>
    local i
    for ((i = 0; i < 5; i++)); do
        mounted "$1" || return 0
        if ! fuse_mounted "$1"; then
            log "warning: $1 is mounted, but not by bindfs; leaving it alone"
            return 0
        fi
        log "unmounting $1"
        umount -- "$1" 2>/dev/null || umount -l -- "$1" || true
    done
    log "warning: $1 is still mounted"
}

# --- configuration ---------------------------------------------------------

# RealMemory in MB: MemTotal minus 10% headroom, so that --mem requests Slurm
# accepts leave room for the OS and the daemons.
real_memory_mb() {
    awk '/^MemTotal:/ { printf "%d\n", $2 / 1024 * 0.9 }' /proc/meminfo
}

write_slurm_conf() {
    local mem mem_per_cpu title spool_dir pid_file log_file node_lines k
    # Every node advertises this machine's memory, as it advertises
    # HITHER_FS_SLURM_CPUS: like separate machines, each node accepts the
    # --mem requests one machine could hold (nothing enforces them here: no
    # cgroups), so a test allocation's request is accepted on any node.
    mem=$(real_memory_mb)
    mem_per_cpu=$((mem / CPUS > 0 ? mem / CPUS : 1))
    if multi_node; then
        # Several slurmd's on one host: %n (the node name) keeps their spool
        # dirs, pid files and logs apart, and each listens on a port of its
        # own, all on 127.0.0.1.
        title="throwaway $NODES-node cluster on one host"
        spool_dir="$STATE_DIR/spool/%n"
        pid_file="$RUN_DIR/slurmd-%n.pid"
        log_file="$LOG_DIR/slurmd-%n.log"
        node_lines=$(for ((k = 1; k <= NODES; k++)); do
            echo "NodeName=node$k NodeAddr=127.0.0.1 Port=$((CTLD_PORT + k)) CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
        done)
    else
        title="throwaway single-node cluster"
        spool_dir="$STATE_DIR/spool"
        pid_file="$RUN_DIR/slurmd.pid"
        log_file="$LOG_DIR/slurmd.log"
        node_lines="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
    fi
    cat >"$SLURM_CONF_FILE" <<EOF
# Generated by hither_fs slurm/cluster.sh -- $title.
ClusterName=hither_fs
SlurmctldHost=$CTLD_HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root

# Use our private munged, not the system one in /run/munge.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge

StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$spool_dir
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$pid_file
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$log_file
SlurmctldDebug=info
SlurmdDebug=info
# Empty SPANK config so the system's /etc/slurm/plugstack.conf is not read.
PlugStackConfig=$STATE_DIR/plugstack.conf

# No cgroups (often unavailable in containers) and no accounting database.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none

# Allocate individual CPUs and memory, so --cpus-per-task and --mem work and
# several jobs can share the node.  Without DefMemPerCPU a job that does not
# ask for --mem gets the whole node's memory and blocks every other job.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$mem_per_cpu
# Reject jobs that can never run (e.g. more CPUs than the node has) at
# submission instead of leaving them pending forever.
EnforcePartLimits=ALL

# Short timers so tests are fast.  Note: slurmctld checks time limits (and
# --signal warnings) only every 30 s, a compiled-in constant.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MessageTimeout=5
KillWait=2
OverTimeLimit=0
MinJobAge=5
InactiveLimit=0
ReturnToService=2

# config_overrides: slurmd trusts the CPUs/RealMemory below instead of the
# hardware it detects, so HITHER_FS_SLURM_CPUS can exceed the real core count.
SlurmdParameters=config_overrides
$node_lines
PartitionName=$PARTITION Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP
EOF
}

# --- subcommands -----------------------------------------------------------

cmd_install() {
    if command -v munged >/dev/null && command -v slurmctld >/dev/null &&
        command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
        command -v bindfs >/dev/null && command -v fusermount3 >/dev/null; then
        log "slurm-wlm, munge, bindfs and fuse3 are already installed"
        return 0
    fi
    need_root install
    apt-get update
    # bindfs and fuse3 are only used with 2 or more nodes, but they are small.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge bindfs fuse3
}

# Start node <node>'s slurmd in a mount and UTS namespace of its own: this
# script runs again there (as `_node`) and ends by exec'ing slurmd, which
# daemonizes; the namespaces live as long as a process is in them.
start_node() {  # <node>
    log "starting slurmd for $1 in namespaces of its own"
    unshare --mount --uts --propagation private -- \
        env HITHER_FS_SLURM_DIR="$STATE_DIR" bash "$SELF" _node "$1" "$(namespace_ids)"
}

# Inside the node's new namespaces (see start_node).
cmd_node() {  # <node> <ids of the caller's namespaces>
    local node=$1 host_ns=$2 own_ns i opts
    [[ -n $node ]] || die "_node needs a node name"
    # Never in the caller's namespaces: it would rename the host and unmount
    # the host's view of the shared dir.  start passes the ids of its own
    # namespaces; anything missing or unreadable counts as a mismatch.
    own_ns=$(namespace_ids)
    [[ $own_ns =~ ^[0-9]+\ [0-9]+$ && $host_ns =~ ^[0-9]+\ [0-9]+$ &&
        ${own_ns% *} != "${host_ns% *}" && ${own_ns#* } != "${host_ns#* }" ]] ||
        die "_node is internal to start: it must run in new namespaces"
    [[ -e $MARKER && -r $CLUSTER_FILE && -d $RUN_DIR ]] || die "_node: no cluster being started in $STATE_DIR"
    load_cluster_file
    hostname "$node"
    # Recorded so that stop can find every process of this node, jobs included.
    namespace_ids >"$RUN_DIR/ns-$node"
    # The namespace started as a copy of the host's mounts, the host's view of
    # the shared dir included.  Detach that copy (lazily: the host's bindfs
    # must not notice) so that this node sees the backing dir only through its
    # own mount, with its own caches and its own locks.
    for ((i = 0; i < 10; i++)); do
        mounted "$SHARED_DIR" || break
        umount -l -- "$SHARED_DIR"
    done
    mounted "$SHARED_DIR" && die "$node: cannot unmount the host's view of $SHARED_DIR"
    opts="allow_other,attr_timeout=$NODE_CACHE_TIMEOUT,entry_timeout=$NODE_CACHE_TIMEOUT,negative_timeout=$NODE_CACHE_TIMEOUT"
    start_bindfs "bindfs-$node" "$opts" || die "$node: bindfs failed to mount $SHARED_DIR"
    # -N: the node name is what tells the slurmd's on this host apart.
    exec slurmd -f "$SLURM_CONF_FILE" -N "$node"
}

cmd_start() {
    need_root start
    local t0 elapsed_ms prog name node running_as shared_created=0 states idle
    t0=$(date +%s%N)
    [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "HITHER_FS_SLURM_CPUS must be a positive integer, got '$CPUS'"
    [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "HITHER_FS_SLURM_NODES must be a positive integer, got '$NODES'"
    if multi_node; then
        [[ $SHARED_DIR == /* ]] || die "HITHER_FS_SHARED_DIR must be an absolute path, got '$SHARED_DIR'"
        [[ $SHARED_DIR != *$'\n'* ]] || die "HITHER_FS_SHARED_DIR must not contain a newline"
        SHARED_DIR=$(realpath -m -- "$SHARED_DIR")
        local state_real
        state_real=$(realpath -m -- "$STATE_DIR")
        # stop deletes the state dir and unmounts the shared dir: neither may
        # contain the other.
        case "$SHARED_DIR/" in "$state_real/"*) die "HITHER_FS_SHARED_DIR must not be inside $STATE_DIR" ;; esac
        case "$state_real/" in "$SHARED_DIR/"*) die "$STATE_DIR must not be inside HITHER_FS_SHARED_DIR" ;; esac
    fi

    running_as=$(
        load_cluster_file
        all_running && describe
    ) || true
    if [[ -n $running_as ]]; then
        [[ $running_as == "$(describe)" ]] ||
            die "a cluster with other settings ($running_as) is running in $STATE_DIR; stop it first"
        log "already running (state dir $STATE_DIR)"
        print_env
        return 0
    fi
    if [[ -n "$(ls -A "$STATE_DIR" 2>/dev/null)" ]]; then
        [[ -e $MARKER ]] || die "$STATE_DIR is not empty and was not created by this script"
        # Leftovers from a crash or a half-started cluster: start from scratch.
        # (A subshell, as stop uses the settings recorded in the state dir.)
        log "found stale state in $STATE_DIR ($(load_cluster_file; running_count) daemons alive); cleaning up"
        (cmd_stop)
    fi
    for prog in munged mungekey slurmctld slurmd sinfo; do
        command -v "$prog" >/dev/null || die "$prog not found; run: sudo $0 install"
    done
    # Unix socket paths are limited to 107 bytes.
    ((${#MUNGE_SOCKET} < 108)) || die "state dir path too long for a socket: $STATE_DIR"
    if multi_node; then
        for prog in bindfs unshare findmnt setsid hostname; do
            command -v "$prog" >/dev/null || die "$prog not found; run: sudo $0 install"
        done
        [[ -c /dev/fuse ]] || die "/dev/fuse is missing; 2 or more nodes need FUSE (in a container: --device /dev/fuse)"
        mounted "$SHARED_DIR" && die "$SHARED_DIR is already a mount point; unmount it or set another HITHER_FS_SHARED_DIR"
        if [[ -e $SHARED_DIR || -L $SHARED_DIR ]]; then
            [[ -d $SHARED_DIR && ! -L $SHARED_DIR ]] || die "$SHARED_DIR exists and is not a directory"
            # Mounting over it would hide its contents, and stop would not
            # know what to remove.
            [[ -z "$(ls -A "$SHARED_DIR")" ]] || die "$SHARED_DIR is not empty; empty it or set another HITHER_FS_SHARED_DIR"
        else
            shared_created=1
        fi
    fi

    # 755 everywhere: unprivileged users must be able to read slurm.conf and
    # reach the munge socket.  The key itself stays 0600.
    mkdir -p "$STATE_DIR"
    touch "$MARKER"
    # Recorded before anything is mounted, so that stop can undo a start that
    # fails half-way.
    write_cluster_file "$shared_created"
    mkdir -p "$MUNGE_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/ctld" "$STATE_DIR/spool"
    chmod 755 "$STATE_DIR" "$MUNGE_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/spool"
    chmod 700 "$STATE_DIR/ctld"
    : >"$STATE_DIR/plugstack.conf"
    write_slurm_conf
    chmod 644 "$SLURM_CONF_FILE" "$STATE_DIR/plugstack.conf"

    # munged: a fresh key for every cluster.  munged insists that the key be
    # owned by the user it runs as and not readable by others; running it as
    # root works without --force (munge 0.5.15).  It daemonizes itself.
    mungekey --create --keyfile="$MUNGE_DIR/munge.key"
    chmod 600 "$MUNGE_DIR/munge.key"
    log "starting munged"
    munged --key-file="$MUNGE_DIR/munge.key" \
        --socket="$MUNGE_SOCKET" \
        --pid-file="$RUN_DIR/munged.pid" \
        --log-file="$LOG_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" ||
        { show_logs; die "munged failed to start"; }

    # slurmctld and slurmd daemonize by default (no -D) and write their pid
    # files where slurm.conf says.  -N makes slurmd use our node name whatever
    # the machine's hostname is.
    log "starting slurmctld"
    slurmctld -f "$SLURM_CONF_FILE" || { show_logs; die "slurmctld failed to start"; }
    if multi_node; then
        # World-writable and sticky like /tmp: any user may create files, and
        # only delete their own.
        mkdir -p "$BACKING_DIR" "$SHARED_DIR"
        chmod 1777 "$BACKING_DIR"
        # slurmd would create its spool dir, but complains in its log first.
        for node in $(node_names); do
            mkdir -p "$STATE_DIR/spool/$node"
            chmod 755 "$STATE_DIR/spool/$node"
        done
        log "mounting the shared dir at $SHARED_DIR (host view)"
        start_bindfs bindfs-host allow_other ||
            { show_logs; die "bindfs failed to start; run '$0 stop' to clean up"; }
        for node in $(node_names); do
            start_node "$node" || { show_logs; die "$node failed to start; run '$0 stop' to clean up"; }
        done
    else
        log "starting slurmd"
        slurmd -f "$SLURM_CONF_FILE" -N "$NODE" || { show_logs; die "slurmd failed to start"; }
    fi

    # Wait until every node reports idle, i.e. registered and can take jobs.
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        # A daemon that exits early usually leaves its pid file behind; fail
        # fast instead of waiting for the timeout.  A slurmd whose port is
        # taken exits before it writes one: the nodes' namespaces show that.
        for name in $(daemon_names); do
            if died_during_startup "$name"; then
                show_logs
                die "$name exited during startup; run '$0 stop' to clean up"
            fi
        done
        if multi_node; then
            for node in $(node_names); do
                if slurmd_gone "$node"; then
                    show_logs
                    die "the slurmd of $node exited during startup; run '$0 stop' to clean up"
                fi
            done
        fi
        states=$(sinfo --noheader --Node --nodes="$(node_list)" --format='%N %T' 2>/dev/null || true)
        idle=$(awk '$2 == "idle"' <<<"$states" | wc -l)
        if ((idle == NODES)); then
            elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
            if multi_node; then
                log "cluster up in ${elapsed_ms} ms: nodes $(node_list), $CPUS CPUs each, partition $PARTITION, shared dir $SHARED_DIR"
            else
                log "cluster up in ${elapsed_ms} ms: node $NODE, $CPUS CPUs, partition $PARTITION"
            fi
            print_env
            return 0
        fi
        sleep 0.2
    done
    show_logs
    states=${states:-unknown}
    die "nodes not idle after ${START_TIMEOUT} s (states: '${states//$'\n'/, }'); run '$0 stop' to clean up"
}

cmd_stop() {
    if [[ ! -e $STATE_DIR ]]; then
        log "not running (no $STATE_DIR)"
        return 0
    fi
    [[ -e $MARKER ]] || die "$STATE_DIR was not created by this script; refusing to touch it"
    need_root stop
    local shared shared_created
    shared=$(recorded shared_dir)
    shared_created=$(recorded shared_dir_created)

    # Cancel jobs first: slurmstepd processes outlive slurmd, so jobs would
    # otherwise keep running after the cluster is gone.  Wait (bounded) until
    # none is pending, running or completing.
    if daemon_pid slurmctld >/dev/null; then
        scancel --partition="$PARTITION" 2>/dev/null || true
        local i
        for ((i = 0; i < 60; i++)); do
            [[ -z "$(squeue --noheader --states=PD,R,CG,S,CF --format=%i 2>/dev/null)" ]] && break
            sleep 0.25
        done
    fi
    # Daemons are found by their pid files, not by the node count, so this
    # also cleans up after a start with other settings.  The slurmd's and
    # slurmctld can shut down together; then the nodes' bindfs, then anything
    # still alive in a node's namespaces (jobs that outlived a killed slurmd).
    # munged goes last because the others may still need it while shutting down.
    # shellcheck disable=SC2046  # the names are single words
    stop_daemons $(pid_file_names 'slurmd*') slurmctld
    # shellcheck disable=SC2046
    stop_daemons $(pid_file_names 'bindfs-node*')
    kill_node_processes
    stop_daemons bindfs-host
    # bindfs unmounts when it exits normally, but not when it was killed.
    [[ -z $shared ]] || unmount_shared "$shared"
    stop_daemons munged
    # Retry once: a daemon that is just exiting may still be writing a file.
    # --one-file-system: never descend into a mount left behind in there.
    rm -rf --one-file-system -- "$STATE_DIR" 2>/dev/null ||
        { sleep 1; rm -rf --one-file-system -- "$STATE_DIR"; }
    if [[ $shared_created == 1 ]] && ! mounted "$shared"; then
        rmdir -- "$shared" 2>/dev/null || log "left $shared in place (not empty)"
    fi
    log "stopped; removed $STATE_DIR"
}

cmd_status() {
    local rc=0 name pid
    load_cluster_file
    for name in $(daemon_names); do
        if pid=$(daemon_pid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            rc=3
        fi
    done
    if multi_node; then
        if mounted "$SHARED_DIR"; then
            echo "shared dir: $SHARED_DIR ($(findmnt --noheadings --output SOURCE,FSTYPE,OPTIONS --mountpoint "$SHARED_DIR"))"
        else
            echo "shared dir: $SHARED_DIR (not mounted)"
            rc=3
        fi
    fi
    if [[ $rc -eq 0 ]]; then
        echo "state dir: $STATE_DIR"
        sinfo
        squeue
    fi
    return "$rc"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) print_env ;;
    _node) cmd_node "${2:-}" "${3:-}" ;;  # internal: see start_node
    *)
        echo "usage: $0 {install|start|stop|status|env}" >&2
        exit 2
        ;;
esac
