#!/usr/bin/env bash
# A throwaway single-node Slurm cluster on localhost, for hither_fs tests and
# for trying hither_fs on a laptop.  Debian/Ubuntu only (uses apt packages).
#
# Usage:
#   sudo slurm/cluster.sh install   # apt-get install slurm-wlm + munge (once)
#   sudo slurm/cluster.sh start     # start munged, slurmctld, slurmd; wait for idle
#   eval "$(slurm/cluster.sh env)"  # point sbatch/squeue/... at this cluster
#   slurm/cluster.sh status         # show daemons, sinfo and squeue
#   sudo slurm/cluster.sh stop      # cancel jobs, stop daemons, delete all state
#
# Environment:
#   HITHER_FS_SLURM_DIR    state directory (default: ${TMPDIR:-/tmp}/hither_fs-slurm).
#                          Everything lives here: munge key and socket,
#                          slurm.conf, spool dirs, logs, pid files.  The
#                          system's /etc/munge and /etc/slurm are never used.
#   HITHER_FS_SLURM_CPUS   CPU count advertised to Slurm (default: nproc).  Set
#                          it higher than the real core count (e.g. 8) so that
#                          several allocations can run at the same time.
#   HITHER_FS_SLURM_PORT   slurmctld port (default 6817); slurmd uses PORT+1.
#                          Change it if a real Slurm already runs on this host.
#   HITHER_FS_SLURM_START_TIMEOUT  seconds to wait for the node (default 60).
#
# The daemons run as root (slurmd must be root to run jobs as other users), so
# install/start/stop need root.  Jobs can be submitted by any user.  sudo drops
# most environment variables: pass settings explicitly, e.g.
#   sudo env HITHER_FS_SLURM_CPUS=8 slurm/cluster.sh start
# and use the same HITHER_FS_SLURM_DIR/TMPDIR for `env` as for `start`.
set -euo pipefail

STATE_DIR="${HITHER_FS_SLURM_DIR:-${TMPDIR:-/tmp}/hither_fs-slurm}"
CPUS="${HITHER_FS_SLURM_CPUS:-$(nproc)}"
CTLD_PORT="${HITHER_FS_SLURM_PORT:-6817}"
SLURMD_PORT=$((CTLD_PORT + 1))
START_TIMEOUT="${HITHER_FS_SLURM_START_TIMEOUT:-60}"
NODE=localhost       # slurmd is told its name with -N, so the real hostname does not matter
PARTITION=debug

SLURM_CONF_FILE="$STATE_DIR/slurm.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
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

# --- process helpers -------------------------------------------------------

# True if the process exists and is not a zombie.  (In containers whose pid 1
# does not reap orphans, a dead daemon can linger as a zombie forever.)
alive() {  # <pid>
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }  # drop "pid (comm) "; the state letter comes first
    [[ ${stat:0:1} != Z ]]
}

# True if a daemon wrote its pid file and that process is gone.  A pid file
# being written is empty for a moment, and a daemonizing process changes its
# pid: only a complete pid file naming a process that stays gone counts.
died_during_startup() {  # <program name>
    local file="$RUN_DIR/$1.pid" pid
    pid=$(cat "$file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    live_pid "$file" "$1" >/dev/null && return 1
    sleep 0.5
    pid=$(cat "$file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    ! live_pid "$file" "$1" >/dev/null
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

# SIGTERM the given daemons, wait (bounded) for all of them to exit, and
# SIGKILL any that are still around after 10 s.
stop_daemons() {  # <program name>...
    local prog pid pids=() i still_running
    for prog in "$@"; do
        pid=$(live_pid "$RUN_DIR/$prog.pid" "$prog") || continue
        log "stopping $prog (pid $pid)"
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    done
    for ((i = 0; i < 100; i++)); do
        still_running=0
        for pid in "${pids[@]}"; do
            alive "$pid" && still_running=1
        done
        ((still_running)) || return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if alive "$pid"; then
            log "pid $pid did not exit after 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

running_count() {
    local n=0
    live_pid "$RUN_DIR/munged.pid" munged >/dev/null && n=$((n + 1))
    live_pid "$RUN_DIR/slurmctld.pid" slurmctld >/dev/null && n=$((n + 1))
    live_pid "$RUN_DIR/slurmd.pid" slurmd >/dev/null && n=$((n + 1))
    echo "$n"
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
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
}

# --- configuration ---------------------------------------------------------

# RealMemory in MB: MemTotal minus 10% headroom, so that --mem requests Slurm
# accepts leave room for the OS and the daemons.
real_memory_mb() {
    awk '/^MemTotal:/ { printf "%d\n", $2 / 1024 * 0.9 }' /proc/meminfo
}

write_slurm_conf() {
    local mem mem_per_cpu
    mem=$(real_memory_mb)
    mem_per_cpu=$((mem / CPUS > 0 ? mem / CPUS : 1))
    cat >"$SLURM_CONF_FILE" <<EOF
# Generated by hither_fs slurm/cluster.sh -- throwaway single-node cluster.
ClusterName=hither_fs
SlurmctldHost=$NODE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root

# Use our private munged, not the system one in /run/munge.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge

StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
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
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# --- subcommands -----------------------------------------------------------

cmd_install() {
    if command -v munged >/dev/null && command -v slurmctld >/dev/null &&
        command -v slurmd >/dev/null && command -v sbatch >/dev/null; then
        log "slurm-wlm and munge are already installed"
        return 0
    fi
    need_root install
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge
}

cmd_start() {
    need_root start
    local n t0 elapsed_ms prog
    t0=$(date +%s%N)
    [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "HITHER_FS_SLURM_CPUS must be a positive integer, got '$CPUS'"
    n=$(running_count)
    if [[ $n -eq 3 ]]; then
        log "already running (state dir $STATE_DIR)"
        print_env
        return 0
    fi
    if [[ -n "$(ls -A "$STATE_DIR" 2>/dev/null)" ]]; then
        [[ -e $MARKER ]] || die "$STATE_DIR is not empty and was not created by this script"
        # Leftovers from a crash or a half-started cluster: start from scratch.
        log "found stale state in $STATE_DIR ($n of 3 daemons alive); cleaning up"
        cmd_stop
    fi
    for prog in munged mungekey slurmctld slurmd sinfo; do
        command -v "$prog" >/dev/null || die "$prog not found; run: sudo $0 install"
    done
    # Unix socket paths are limited to 107 bytes.
    ((${#MUNGE_SOCKET} < 108)) || die "state dir path too long for a socket: $STATE_DIR"

    # 755 everywhere: unprivileged users must be able to read slurm.conf and
    # reach the munge socket.  The key itself stays 0600.
    mkdir -p "$STATE_DIR"
    touch "$MARKER"
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
    log "starting slurmd"
    slurmd -f "$SLURM_CONF_FILE" -N "$NODE" || { show_logs; die "slurmd failed to start"; }

    # Wait until the node reports idle, i.e. it registered and can take jobs.
    local state="" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        # A daemon that exits early (say, its port is taken) leaves its pid
        # file behind; fail fast instead of waiting for the timeout.
        for prog in slurmctld slurmd; do
            if died_during_startup "$prog"; then
                show_logs
                die "$prog exited during startup; run '$0 stop' to clean up"
            fi
        done
        state=$(sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null || true)
        if [[ $state == idle ]]; then
            elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
            log "cluster up in ${elapsed_ms} ms: node $NODE, $CPUS CPUs, partition $PARTITION"
            print_env
            return 0
        fi
        sleep 0.2
    done
    show_logs
    die "node not idle after ${START_TIMEOUT} s (state: '${state:-unknown}'); run '$0 stop' to clean up"
}

cmd_stop() {
    if [[ ! -e $STATE_DIR ]]; then
        log "not running (no $STATE_DIR)"
        return 0
    fi
    [[ -e $MARKER ]] || die "$STATE_DIR was not created by this script; refusing to touch it"
    need_root stop

    # Cancel jobs first: slurmstepd processes outlive slurmd, so jobs would
    # otherwise keep running after the cluster is gone.  Wait (bounded) until
    # none is pending, running or completing.
    if live_pid "$RUN_DIR/slurmctld.pid" slurmctld >/dev/null; then
        scancel --partition="$PARTITION" 2>/dev/null || true
        local i
        for ((i = 0; i < 60; i++)); do
            [[ -z "$(squeue --noheader --states=PD,R,CG,S,CF --format=%i 2>/dev/null)" ]] && break
            sleep 0.25
        done
    fi
    # slurmd and slurmctld can shut down together; munged goes last because
    # they may still need it while shutting down.
    stop_daemons slurmd slurmctld
    stop_daemons munged
    # Retry once: a daemon that is just exiting may still be writing a file.
    rm -rf -- "$STATE_DIR" 2>/dev/null || { sleep 1; rm -rf -- "$STATE_DIR"; }
    log "stopped; removed $STATE_DIR"
}

cmd_status() {
    local rc=0 prog pid
    for prog in munged slurmctld slurmd; do
        if pid=$(live_pid "$RUN_DIR/$prog.pid" "$prog"); then
            echo "$prog: running (pid $pid)"
        else
            echo "$prog: not running"
            rc=3
        fi
    done
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
    *)
        echo "usage: $0 {install|start|stop|status|env}" >&2
        exit 2
        ;;
esac
