"""Slurm: worker allocations through ``sbatch``, and the handler that scales them.

This module is the only one that talks to Slurm. It runs three commands,
always as argument lists: ``sbatch`` (once per allocation, never per job),
``squeue`` (one batched call per interval, only for allocations that have
not yet shown a heartbeat) and ``scancel``. It never uses ``sacct``: many
clusters have no accounting. What a running allocation is doing comes from
the root - the heartbeat files of its worker - not from Slurm.
"""

import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import environment, protocol
from .handlers import JobHandler
from .lease import LeaseJudge, Recovery
from .queue import count_tickets
from .root import Root, now_iso
from .runtime.files import (CorruptFileError, fs_clock, listdir, makedirs, read_json, remove_quietly, with_parents,
                            write_json, write_new)
from .runtime.layout import check_queue_name, is_worker_id

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "worker.sbatch")
log = logging.getLogger("hither_fs.slurm")
#: A handler rewrites its queue's scheduler.json at least this often (seconds) while it stands;
#: ``hither-fs ls`` ignores one older than ``NOTE_STALE``.
NOTE_REFRESH = 60.0
NOTE_STALE = 300.0
_FINAL_SLURM_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                       "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmError(RuntimeError):
    """A Slurm command failed; the message has its output. ``transient``: the failure
    says the controller is busy, unreachable or over a submit limit (try again later)."""

    def __init__(self, message: str, transient: bool = False, said: str = ""):
        super().__init__(message)
        self.transient = transient
        #: the command's own words, one line ("sbatch: error: Batch job submission failed: " dropped)
        self.said = said or message


#: sbatch's words for failures that pass: the controller is down, slow or busy, or a
#: submit limit (how many jobs a user may have queued) is reached for now.
_TRANSIENT = re.compile(
    r"socket timed out|unable to contact slurm controller|temporarily unavailable|temporarily unable|"
    r"try again|connection refused|connection timed out|zero bytes were transmitted|not responding|"
    r"maxsubmit|submit ?limit|job submit limit|slurmctld.*(busy|down)", re.IGNORECASE)

#: Allocations in a row that end before their worker starts, after which a queue's jobs fail.
FAILED_STARTS = 3

#: Seconds of an allocation's time that its worker may need to start (and ask Slurm the
#: time left) before it claims: a job whose timeout leaves less could never be claimed.
WORKER_START_ALLOWANCE = 60

#: squeue's pending reasons for an allocation Slurm will never start as asked.
NEVER_REASONS = frozenset({
    "BadConstraints", "PartitionConfig", "PartitionTimeLimit", "InvalidAccount", "InvalidQOS", "AssocMaxCpuPerJobLimit", "AssocMaxWallDurationPerJobLimit",
    "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob", "QOSMaxWallDurationPerJobLimit", "QOSMaxNodePerJobLimit",
    "QOSMaxGRESPerJob", "MaxCpuPerAccount", "DependencyNeverSatisfied"})


def parse_slurm_time(text: str) -> Optional[float]:
    """Seconds in a Slurm time string (``90``, ``1:30:00``, ``2-00:00:00``, ``12:30`` = mm:ss
    as squeue prints time left); None for ``UNLIMITED``/``INVALID``/empty."""
    text = (text or "").strip()
    if not text or text.upper() in ("UNLIMITED", "INVALID", "NOT_SET", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError("not a Slurm time: {!r}".format(text))
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is None:
        if b is None:
            return a * 60.0                      # minutes
        if c is None:
            return a * 60.0 + b                  # minutes:seconds
        return a * 3600.0 + b * 60 + c           # hours:minutes:seconds
    if b is None:
        return days * 86400.0 + a * 3600         # days-hours
    if c is None:
        return days * 86400.0 + a * 3600 + b * 60
    return days * 86400.0 + a * 3600 + b * 60 + c


def format_slurm_time(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return "{}-{:02d}:{:02d}:{:02d}".format(days, hours, minutes, secs)


def _run(cmd: List[str], env: Optional[Dict[str, str]] = None, timeout: float = 60) -> str:
    if shutil.which(cmd[0]) is None:
        raise SlurmError("{} not found: is Slurm installed here (and SLURM_CONF set if needed)?".format(cmd[0]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError("{} did not answer within {} s".format(cmd[0], timeout), transient=True) from None
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()
        said = "; ".join(re.sub(r"^({}: error: )?(Batch job submission failed: )?".format(re.escape(cmd[0])), "",
                                line.strip()) for line in output.splitlines() if line.strip())
        raise SlurmError("{} failed (exit {}): {}".format(cmd[0], proc.returncode, output),
                         transient=bool(_TRANSIENT.search(output)), said=said)
    return proc.stdout


class Allocation:
    """What one worker allocation asks of Slurm, and how to submit it."""

    def __init__(self, *, partition: Optional[str] = None, time_limit: str = "01:00:00",
                 slots: int = 4, cpus_per_slot: int = 1, memory_gb_per_slot: float = 2.0,
                 idle_timeout: float = 120.0, warning_lead: int = 120, drain_margin: float = 20.0,
                 sbatch_args: Iterable[str] = (), python: Optional[str] = None, lease: float = 30.0,
                 account: Optional[str] = None, qos: Optional[str] = None, constraint: Optional[str] = None,
                 gres: Optional[str] = None):
        for name, value in (("partition", partition), ("account", account), ("qos", qos),
                            ("constraint", constraint), ("gres", gres)):
            if value is not None and (not isinstance(value, str) or not value.strip() or "\n" in value):
                raise ValueError("{} must be a non-empty string or None, not {!r}".format(name, value))
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError("slots must be a positive integer, not {!r}".format(slots))
        if isinstance(cpus_per_slot, bool) or not isinstance(cpus_per_slot, int) or cpus_per_slot < 1:
            raise ValueError("cpus_per_slot must be a positive integer, not {!r}".format(cpus_per_slot))
        if not memory_gb_per_slot or memory_gb_per_slot <= 0:
            raise ValueError("memory_gb_per_slot must be positive, not {!r}".format(memory_gb_per_slot))
        self.seconds = parse_slurm_time(str(time_limit))
        if self.seconds is None or self.seconds < 60:
            raise ValueError("time_limit must be at least one minute, not {!r}".format(time_limit))
        self.partition = partition
        self.account, self.qos, self.constraint, self.gres = account, qos, constraint, gres
        self.time_limit = str(time_limit)
        self.slots = slots
        self.cpus_per_slot = cpus_per_slot
        self.memory_gb_per_slot = float(memory_gb_per_slot)
        self.idle_timeout = idle_timeout
        self.warning_lead = int(min(warning_lead, self.seconds // 2))
        if not 0 <= drain_margin < self.seconds:
            raise ValueError("drain_margin must be between 0 and the time limit, not {!r}".format(drain_margin))
        self.drain_margin = drain_margin
        self.sbatch_args = [str(a) for a in sbatch_args]
        self.python = python or sys.executable
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or lease <= 0:
            raise ValueError("lease must be a positive number of seconds, not {!r}".format(lease))
        self.lease = float(lease)

    def shape(self) -> Dict[str, Any]:
        """What a job can count on in such an allocation: it runs only in allocations of
        exactly this shape (the timers are not part of it)."""
        return {"partition": self.partition, "account": self.account, "qos": self.qos,
                "constraint": self.constraint, "gres": self.gres, "time_limit_seconds": self.seconds,
                "slots": self.slots, "cpus_per_slot": self.cpus_per_slot,
                "memory_gb_per_slot": self.memory_gb_per_slot, "sbatch_args": list(self.sbatch_args)}

    @property
    def cpus(self) -> int:
        return self.slots * self.cpus_per_slot

    @property
    def memory_gb(self) -> float:
        return self.slots * self.memory_gb_per_slot

    def sbatch_command(self, root: Root, queue_name: str) -> List[str]:
        log_dir = allocation_log_dir(root)
        makedirs(log_dir)
        cmd = ["sbatch", "--parsable",
               "--job-name={}".format(job_name(root, queue_name)),
               "--time={}".format(format_slurm_time(self.seconds)),
               "--cpus-per-task={}".format(self.cpus),
               "--mem={}M".format(int(math.ceil(self.memory_gb * 1024))),
               "--signal=B:USR1@{}".format(self.warning_lead),
               "--output={}".format(os.path.join(log_dir, "%j.log")),
               "--export=ALL"]
        for option, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                              ("constraint", self.constraint), ("gres", self.gres)):
            if value:
                cmd.append("--{}={}".format(option, value))
        return cmd + self.sbatch_args + [TEMPLATE]

    def worker_environment(self, root: Root, queue_name: str,
                    snapshot: Optional[environment.Snapshot] = None) -> Dict[str, str]:
        env = (snapshot or environment.current()).for_worker(environment.PACKAGE_PARENT)
        # no HITHER_FS_TIME_LIMIT: the script asks Slurm for the time left when the worker
        # starts, so the deadline counts from the allocation's start, not the worker's
        env.pop("HITHER_FS_TIME_LIMIT", None)
        env.update(HITHER_FS_ROOT=root.path, HITHER_FS_QUEUE=queue_name, HITHER_FS_SLOTS=str(self.slots),
                   HITHER_FS_PYTHON=self.python, HITHER_FS_IDLE_TIMEOUT=str(self.idle_timeout),
                   HITHER_FS_MEMORY_GB=str(self.memory_gb), HITHER_FS_DRAIN_MARGIN=str(self.drain_margin),
                   HITHER_FS_LEASE=str(self.lease), HITHER_FS_SHAPE=json.dumps(self.shape()))
        return env

    def submit(self, root: Root, queue_name: str, snapshot: Optional[environment.Snapshot] = None) -> str:
        """``sbatch`` one allocation, in ``snapshot``'s environment (this process's by default);
        return its Slurm job id."""
        cmd = self.sbatch_command(root, queue_name)
        log.debug("sbatch for queue %s: %s", queue_name, shlex.join(cmd))
        out = _run(cmd, env=self.worker_environment(root, queue_name, snapshot))
        sid = out.strip().split(";")[0]
        log.info("sbatch submitted allocation %s (%d slot%s) for queue %s: %s", sid, self.slots,
                 "" if self.slots == 1 else "s", queue_name, shlex.join(cmd))
        return sid


def job_name(root: Root, queue_name: str) -> str:
    """The Slurm job name of an allocation: its queue, and a short hash of its root (so two
    roots' allocations of the same queue are told apart)."""
    return "hither-fs-{}-{}".format(queue_name, hashlib.sha1(root.path.encode()).hexdigest()[:8])


def squeue_states(name: str) -> Dict[str, Tuple[str, str]]:
    """One ``squeue`` call: ``{job id: (state, reason)}`` of this user's Slurm jobs called ``name``.

    Asking by name rather than by id also sees allocations submitted by other
    processes, and never fails on ids Slurm has already forgotten.
    """
    out = _run(["squeue", "--noheader", "--me", "--name=" + name, "--format=%i %T %r"])
    states = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2].strip() if len(parts) == 3 else "")
    return states


def allocation_log_dir(root: Root) -> str:
    """Where allocations write their logs (``sbatch --output``): ``logs/slurm/<slurm job id>.log``."""
    return os.path.join(root.path, "logs", "slurm")


def _allocation_log(root: Root, slurm_job_id: str) -> Optional[str]:
    """The start of an allocation's log in the root, None if there is none."""
    try:
        with open(os.path.join(allocation_log_dir(root), slurm_job_id + ".log"), "rb") as f:
            return f.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return None


def scancel(job_ids: Iterable[str]) -> None:
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel"] + ids)


def waiting_reason(note: Any) -> str:
    """One line from a queue's ``scheduler.json``: why its jobs wait ("" when it says nothing)."""
    if not isinstance(note, dict):
        return ""
    if note.get("problem"):
        return str(note["problem"])
    parts = []
    for sid, info in sorted((note.get("allocations") or {}).items()):
        if isinstance(info, dict):
            state = str(info.get("state", "?")).lower()
            reason = info.get("reason")
            parts.append("allocation {} {}{}".format(sid, state, ": " + reason if reason and reason != "None"
                                                     else " (its worker is starting)" if state == "running" else ""))
    for sid in note.get("submitted") or []:
        parts.append("allocation {} submitted".format(sid))
    return "; ".join(parts)


class QueueWaits:
    """Why queued jobs wait, by queue: what the scheduler said (``scheduler.json``), or that
    no live worker serves the queue. Each queue is looked up once per instance (``hither-fs
    ls``/``show`` make one per command, the progress line one every few seconds)."""

    def __init__(self, root: Root):
        self.root = root
        self.served = served_queues(root)
        self.reasons: Dict[str, str] = {}

    def reason(self, queue: Any) -> str:
        if not isinstance(queue, str) or queue.startswith("inproc-"):
            return ""  # an in-process queue: its submitting process runs it while it waits
        if queue not in self.reasons:
            try:
                path = self.root.layout.scheduler_note(check_queue_name(queue))
                note = read_json(path)
                if fs_clock(self.root.layout.workers) - os.stat(path).st_mtime > NOTE_STALE:
                    note = None  # its handler is gone: what it said then is no reason now
            except (OSError, CorruptFileError, ValueError):
                note = None
            reason = waiting_reason(note)
            if not reason and queue not in self.served:
                reason = "no live worker serves queue {}".format(queue)
            self.reasons[queue] = reason
        return self.reasons[queue]


def describe_shape(shape: Any) -> str:
    """A short line for an allocation's shape: ``debug 1cpu 2G 01:00:00 gres=gpu:1``."""
    if not isinstance(shape, dict):
        return "-"
    parts = [str(shape.get("partition") or "(default)"), "{}cpu".format(shape.get("cpus_per_slot", "?")),
             "{:g}G".format(shape.get("memory_gb_per_slot") or 0)]
    if shape.get("time_limit_seconds"):
        limit = format_slurm_time(shape["time_limit_seconds"])
        parts.append(limit[2:] if limit.startswith("0-") else limit)
    parts += ["{}={}".format(k, shape[k]) for k in ("account", "qos", "constraint", "gres") if shape.get(k)]
    if shape.get("sbatch_args"):
        parts.append(" ".join(shape["sbatch_args"]))
    return " ".join(parts)


def served_queues(root: Root) -> set:
    """The queues some live worker serves (from their heartbeats)."""
    return {q for hb in live_workers(root) for q in hb.get("queues", [])}


def live_workers(root: Root, max_age: float = 60.0) -> List[Dict[str, Any]]:
    """Heartbeats of workers that beat within ``max_age`` seconds (by the file's age on the
    file system's clock - a node whose clock is off must not take live workers for dead
    ones; for display and scaling, never for taking jobs back)."""
    now = fs_clock(root.layout.workers)
    found = []
    for name in listdir(root.layout.workers):
        if not is_worker_id(name):
            continue
        path = root.layout.heartbeat(name)
        try:
            age = now - os.stat(path).st_mtime
            hb = read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(hb, dict) and age <= max_age:
            hb["age_seconds"] = age
            found.append(hb)
    return found


class _QueueTracker:
    """What a handler knows of the allocations of one of its queues (one per environment)."""

    def __init__(self, queue: str, snapshot: environment.Snapshot, squeue_interval: float):
        self.queue = queue
        self.snapshot = snapshot
        self.submitted: Dict[str, float] = {}  # not yet beating: Slurm job id -> when submitted
        self.in_slurm: Dict[str, Tuple[str, str]] = {}  # what squeue listed at the last look
        self.next_squeue = 0.0
        self.squeue_backoff = squeue_interval
        self.next_sbatch = 0.0  # back-off after transient sbatch failures
        self.sbatch_backoff = 0.0
        self.failing_since: Optional[float] = None
        self.note: Optional[Dict[str, Any]] = None  # what scheduler.json says now
        self.note_written = 0.0
        self.serving: set = set()  # allocations whose worker was seen beating (logged once each)
        self.ever_served: set = set()  # every allocation whose worker was ever seen beating
        self.judged: set = set()  # ended allocations whose log was looked at
        self.failed_starts: List[str] = []  # the last allocations in a row that ended before their worker started


class SlurmJobHandler(JobHandler):
    """Run jobs in worker allocations that this handler submits with ``sbatch``.

    When jobs are queued for it, the handler submits allocations - up to
    ``max_allocations`` at once, each running one worker daemon with ``slots``
    job slots of ``cpus_per_slot`` CPUs and ``memory_gb_per_slot`` GB. An
    allocation exits by itself after ``idle_timeout`` seconds without work.
    Slurm warns it ``warning_lead`` seconds before its ``time_limit`` (it then
    claims no more jobs), and ``drain_margin`` seconds before the limit it
    hands its unfinished jobs back to the queue for the next allocation.
    A job may ask for more than one slot's worth with
    ``hi.Config(job_resources={'cpus': 4, 'memory_gb': 16})``. ``lease``: seconds
    without a heartbeat (on the observer's clock) after which an allocation's
    worker counts as lost and its jobs run elsewhere - an allocation that is
    suspended longer than that loses its jobs, and discards their outcomes when
    it is resumed.

    The allocation's *shape* - ``partition``, ``account``, ``qos``,
    ``constraint``, ``gres``, ``time_limit``, ``cpus_per_slot``,
    ``memory_gb_per_slot`` and ``sbatch_args`` - and the submitter's Python
    environment name the queue (``slurm-<hash>``): jobs run only in
    allocations of their own shape and environment. With ``queue_name`` the
    jobs go to exactly that queue, which allocations submitted by hand
    (``hither-fs workers submit --queue``) serve too: matching their shape and
    environment is then up to you. When sbatch refuses the
    allocation for good (an unknown partition, more than the partition
    allows, a bad option), the jobs that need it fail with sbatch's words, at
    the ``.run()`` that asked (which raises :class:`SlurmError`) or as the
    jobs' error; this handler refuses further jobs at once. Failures that pass
    (the controller down or busy, a submit limit) are retried with back-off
    for up to ``submit_retry_for`` seconds, then count as refusals. An
    allocation Slurm says it will never start (squeue reasons such as
    ``PartitionTimeLimit``) is cancelled and counts as a refusal too.
    """

    def __init__(self, *, partition: Optional[str] = None, time_limit: str = "01:00:00",
                 cpus_per_slot: int = 1, memory_gb_per_slot: float = 2.0, slots: int = 4,
                 max_allocations: int = 2, sbatch_args: Iterable[str] = (), idle_timeout: float = 120.0,
                 warning_lead: int = 120, drain_margin: float = 20.0, queue_name: Optional[str] = None,
                 squeue_interval: float = 10.0, lease: float = 30.0, account: Optional[str] = None,
                 qos: Optional[str] = None, constraint: Optional[str] = None, gres: Optional[str] = None,
                 submit_retry_for: float = 600.0):
        if isinstance(max_allocations, bool) or not isinstance(max_allocations, int) or max_allocations < 1:
            raise ValueError("max_allocations must be a positive integer, not {!r}".format(max_allocations))
        self.allocation = Allocation(partition=partition, time_limit=time_limit, slots=slots,
                                     cpus_per_slot=cpus_per_slot, memory_gb_per_slot=memory_gb_per_slot,
                                     idle_timeout=idle_timeout, warning_lead=warning_lead,
                                     drain_margin=drain_margin, sbatch_args=sbatch_args, lease=lease,
                                     account=account, qos=qos, constraint=constraint, gres=gres)
        self.max_allocations = max_allocations
        self.queue_name = None if queue_name is None else check_queue_name(queue_name)
        self.squeue_interval = squeue_interval
        self.submit_retry_for = submit_retry_for
        self.history: List[str] = []  # every allocation this handler submitted
        #: queue -> sbatch's words, for the queues whose allocations it refused for good (they take no job)
        self.refused: Dict[str, str] = {}
        self._trackers: Dict[str, _QueueTracker] = {}
        if self.queue_name:  # known now: the handler serves it even before it is given a job
            self.queue_for(None)
        self._next_look = 0.0
        self.lease = lease
        self._recovery: Dict[str, Recovery] = {}

    def queue_for(self, root: Optional[Root]) -> str:
        snapshot = environment.current()
        queue = self.queue_name or snapshot.queue("slurm", self.allocation.shape())
        if queue not in self._trackers:
            self._trackers[queue] = _QueueTracker(queue, snapshot, self.squeue_interval)
        return queue

    def shape(self) -> Dict[str, Any]:
        return self.allocation.shape()

    def check(self, spec) -> None:
        if spec.get("queue") in self.refused:
            raise SlurmError("Slurm refused the allocations of {!r}, so it takes no more jobs: {}".format(
                self, self.refused[spec["queue"]]))
        timeout = spec.get("timeout")
        usable = self.allocation.seconds - self.allocation.drain_margin - WORKER_START_ALLOWANCE
        if timeout and timeout > usable:
            raise ValueError("job_timeout {} s cannot fit in an allocation whose time limit {} leaves {:.0f} s "
                             "for jobs (after drain_margin, and {} s for its worker to start); raise time_limit"
                             .format(timeout, self.allocation.time_limit, max(usable, 0), WORKER_START_ALLOWANCE))

    def resources_for(self, requested):
        need = {"cpus": self.allocation.cpus_per_slot, "memory_gb": self.allocation.memory_gb_per_slot}
        need.update(requested or {})
        for key, total in (("cpus", self.allocation.cpus), ("memory_gb", self.allocation.memory_gb)):
            if need[key] > total:
                raise ValueError("a job asking for {} {} cannot fit in an allocation of {} {}".format(
                    need[key], key, total, key))
        return need

    def submitted(self, root: Root, job) -> None:
        self._refuse_unsafe_root(root)
        self.scale(root)  # at most once a second: submitting many jobs stays cheap

    def help(self, root: Root) -> None:
        self.scale(root)

    # -- scaling -------------------------------------------------------------------

    def demand(self, root: Root, queue: str, workers: List[Dict[str, Any]], cap: int) -> int:
        """Jobs of ``queue`` that are queued or running - counted no further than ``cap``
        (the root is never read whole for this). Pending jobs do not count: an allocation
        submitted for them would idle out while their upstream runs, and be submitted again;
        once promoted they are queued, and the next :meth:`scale` sees them."""
        count = count_tickets(root.layout, queue, cap=cap)
        for hb in workers:
            count += len(hb.get("jobs") or [])
        return count

    def scale(self, root: Root) -> List[str]:
        """Submit the allocations the queues need now; return their Slurm ids.

        Raises :class:`SlurmError` when Slurm refused an allocation for good
        (the jobs that needed it have failed with its words).
        """
        now = time.monotonic()
        if now < self._next_look:
            return []
        self._next_look = now + 1.0
        recovery = self._recovery.get(root.path)
        if recovery is None:
            recovery = self._recovery[root.path] = Recovery(root, LeaseJudge(self.lease))
        recovery.run()  # jobs of allocations that died get back in the queue
        beating = live_workers(root)
        new: List[str] = []
        for tracker in list(self._trackers.values()):
            new += self._scale_queue(root, tracker, [hb for hb in beating if tracker.queue in hb.get("queues", [])],
                                     now)
        return new

    def _scale_queue(self, root: Root, tracker: _QueueTracker, workers: List[Dict[str, Any]],
                     now: float) -> List[str]:
        # every live allocation counts against max_allocations, draining ones too:
        # their replacement is submitted when they leave
        serving = {str(hb.get("slurm_job_id")) for hb in workers if hb.get("slurm_job_id")}
        for sid in sorted(serving - tracker.serving):
            log.info("allocation %s serves queue %s: its worker is up", sid, tracker.queue)
        if serving - tracker.ever_served:
            tracker.failed_starts = []
        tracker.serving, tracker.ever_served = serving, tracker.ever_served | serving
        demand = self.demand(root, tracker.queue, workers, cap=self.max_allocations * self.allocation.slots + 1)
        need = min(self.max_allocations, math.ceil(demand / self.allocation.slots))
        if need <= len(workers):
            tracker.failing_since = None  # nothing to submit: a failure long ago says nothing of the next one
            self._write_note(root, tracker, {})
            return []
        self._look_at_slurm(root, tracker, now)
        beating = {str(hb.get("slurm_job_id")) for hb in workers}
        waiting = {sid: sr for sid, sr in tracker.in_slurm.items() if sid not in beating}
        never = {sid: reason for sid, (state, reason) in waiting.items()
                 if state == "PENDING" and reason in NEVER_REASONS}
        if never and not workers and not tracker.submitted and len(never) == len(waiting):
            sid, reason = sorted(never.items())[0]
            try:
                scancel(never)
            except SlurmError as exc:
                log.warning("could not cancel allocations %s: %s", ", ".join(sorted(never)), exc)
            tracker.in_slurm = {}
            self._refuse(root, tracker, "Slurm will never start allocation {} as asked (pending: {}); check "
                                        "the handler's partition, account, qos, time_limit and sizes".format(
                                            sid, reason))
        starting = (set(waiting) | set(tracker.submitted)) - beating
        new = []
        for _ in range(need - len(workers) - len(starting)):
            if now < tracker.next_sbatch:
                break
            try:
                sid = self.allocation.submit(root, tracker.queue, tracker.snapshot)
            except SlurmError as exc:
                self._sbatch_failed(root, tracker, exc, now, workers or starting)
                break
            if tracker.failing_since is not None:
                log.warning("sbatch works again for queue %s", tracker.queue)
            tracker.failing_since, tracker.sbatch_backoff = None, 0.0
            tracker.submitted[sid] = now
            self.history.append(sid)
            new.append(sid)
        if tracker.failing_since is None:  # else the note says that sbatch keeps failing
            self._write_note(root, tracker, {"allocations": {sid: {"state": state, "reason": reason}
                                                             for sid, (state, reason) in sorted(waiting.items())},
                                             "submitted": sorted(set(tracker.submitted) - set(waiting))})
        return new

    def _sbatch_failed(self, root: Root, tracker: _QueueTracker, exc: SlurmError, now: float,
                       others: Any) -> None:
        """A transient failure is retried with back-off (and said once); a refusal, or failures
        for longer than ``submit_retry_for``, fail the queue's jobs unless an allocation serves it."""
        if exc.transient:
            if tracker.failing_since is None:
                tracker.failing_since = now
                log.warning("sbatch failed for queue %s (retrying with back-off for up to %.0f s): %s",
                            tracker.queue, self.submit_retry_for, exc)
            if now - tracker.failing_since < self.submit_retry_for:
                tracker.sbatch_backoff = min(300.0, max(5.0, 2 * tracker.sbatch_backoff))
                tracker.next_sbatch = now + tracker.sbatch_backoff
                self._write_note(root, tracker, {"problem": "sbatch keeps failing, retrying: {}".format(exc)})
                return
            message = "{} (sbatch kept failing for {:.0f} s)".format(exc.said, now - tracker.failing_since)
        else:
            message = "{} (sbatch refused the allocation)".format(exc.said)
        if others:  # the allocations there serve the jobs; ask for more later, not every second
            tracker.sbatch_backoff = min(300.0, max(60.0, 2 * tracker.sbatch_backoff))
            tracker.next_sbatch = now + tracker.sbatch_backoff
            log.warning("sbatch refused another allocation for queue %s (next try in %.0f s): %s", tracker.queue,
                        tracker.sbatch_backoff, message)
            return
        self._refuse(root, tracker, message)

    def _refuse(self, root: Root, tracker: _QueueTracker, message: str) -> None:
        """Slurm will not run this shape: fail its queued and pending jobs, take no more."""
        self.refused[tracker.queue] = message
        error = protocol.error_record("SlurmError", message, "starting a Slurm allocation for it", module=__name__)
        failed = protocol.fail_queue(root, tracker.queue, error)
        self._write_note(root, tracker, {"problem": "refused: " + message})
        log.error("Slurm refused the allocations of queue %s; %d job(s) failed: %s", tracker.queue, failed, message)
        raise SlurmError(message)

    def _write_note(self, root: Root, tracker: _QueueTracker, note: Dict[str, Any]) -> None:
        """``queue/<queue>/scheduler.json``: why the queue's jobs wait, for ``hither-fs ls``/``show``
        (written when it changes, and once a minute while it stands: readers take an older note
        for one its writer left behind)."""
        now = time.monotonic()
        if note == tracker.note and (not note or now - tracker.note_written < NOTE_REFRESH):
            return
        path = root.layout.scheduler_note(tracker.queue)
        try:
            if note:
                with_parents(lambda: write_json(path, dict(note, handler=repr(self), host=socket.gethostname(),
                                                           pid=os.getpid(), updated=now_iso())),
                             os.path.dirname(path))
            else:
                remove_quietly(path)
        except OSError as exc:
            log.debug("could not write %s: %s", path, exc)
            return
        tracker.note, tracker.note_written = note, now

    def _look_at_slurm(self, root: Root, tracker: _QueueTracker, now: float) -> None:
        """Which allocations of this queue Slurm has, pending or running, and why they pend:
        one batched ``squeue`` per interval at most, backing off while it fails."""
        if now < tracker.next_squeue:
            return
        try:
            states = squeue_states(job_name(root, tracker.queue))
        except SlurmError:
            tracker.squeue_backoff = min(tracker.squeue_backoff * 2, 300.0)
            tracker.next_squeue = now + tracker.squeue_backoff
            return
        tracker.squeue_backoff = self.squeue_interval
        tracker.next_squeue = now + self.squeue_interval
        before = tracker.in_slurm
        tracker.in_slurm = {sid: sr for sid, sr in states.items()
                            if sr[0] not in _FINAL_SLURM_STATES and sr[0] != "COMPLETING"}
        for sid, (state, reason) in sorted(tracker.in_slurm.items()):
            if before.get(sid) == (state, reason):
                continue
            if state == "PENDING":
                log.info("allocation %s for queue %s is pending in Slurm: %s", sid, tracker.queue,
                         reason if reason and reason != "None" else "no reason given")
            elif state == "RUNNING":
                log.info("allocation %s for queue %s has started in Slurm", sid, tracker.queue)
            else:
                log.debug("allocation %s for queue %s is %s in Slurm%s", sid, tracker.queue, state,
                          ": " + reason if reason and reason != "None" else "")
        for sid in sorted(set(before) - set(tracker.in_slurm)):
            log.debug("allocation %s for queue %s has left Slurm's queue (%s)", sid, tracker.queue,
                      states.get(sid, ("gone",))[0].lower())
        self._judge_ended(root, tracker, (set(before) | set(tracker.submitted)) - set(tracker.in_slurm), states)
        # what squeue lists speaks for itself; keep only submissions too recent to be listed
        tracker.submitted = {sid: t for sid, t in tracker.submitted.items()
                             if sid not in states and now - t < 2 * self.squeue_interval}

    def _judge_ended(self, root: Root, tracker: _QueueTracker, ended: Iterable[str],
                     states: Dict[str, Tuple[str, str]]) -> None:
        """Allocations that Slurm ran but whose worker never started (a broken Python
        environment on the nodes, a scratch directory or root it refuses): submitting more
        would go on for ever, the jobs waiting. After :data:`FAILED_STARTS` in a row - never
        seen beating, their log without the worker's "serving" line - the queue's jobs fail
        with the last log's words."""
        for sid in sorted(set(ended) - tracker.ever_served - tracker.judged):
            if sid not in self.history or states.get(sid, ("",))[0] == "COMPLETING":
                continue
            said = _allocation_log(root, sid)
            if said is None:
                continue  # it never ran (cancelled while pending), or its log is not seen here yet
            tracker.judged.add(sid)
            if re.search(r" worker \S+ serving ", said):
                tracker.failed_starts = []
            else:
                tracker.failed_starts.append(sid)
        if len(tracker.failed_starts) >= FAILED_STARTS:
            last = tracker.failed_starts[-1]
            words = " | ".join((_allocation_log(root, last) or "").strip().splitlines()[-5:]) or "(empty)"
            self._refuse(root, tracker, "allocations {} ended before their worker started; the log of {} "
                                        "(logs/slurm/{}.log) ends: {}".format(", ".join(tracker.failed_starts),
                                                                               last, last, words))

    def release(self) -> None:
        """The end of the handler's ``with`` block, its jobs done (hither halted its batches
        there): the allocations this handler submitted are let go unless their queue still
        holds jobs - one still pending in Slurm is cancelled, a running one's worker is asked
        to stop (it finishes what it runs, then exits). Allocations whose worker has not
        started beating yet, and those of others, leave after ``idle_timeout`` as always."""
        ours = set(self.history)
        for path in list(self._recovery):  # the roots this handler has scaled for
            root = Root.get(path)
            try:
                beating = live_workers(root)
                for tracker in self._trackers.values():
                    if count_tickets(root.layout, tracker.queue, cap=1):
                        continue  # jobs are left (another process's): its allocations serve them
                    pending = [sid for sid, (state, _) in squeue_states(job_name(root, tracker.queue)).items()
                               if sid in ours and state == "PENDING"]
                    scancel(pending)
                    for hb in beating:
                        if str(hb.get("slurm_job_id")) in ours and tracker.queue in hb.get("queues", []) \
                                and is_worker_id(str(hb.get("id"))):
                            request = root.layout.stop_request(hb["id"])
                            try:
                                with_parents(lambda: write_new(request), os.path.dirname(request))
                            except FileExistsError:
                                pass
                    for sid in pending:
                        tracker.submitted.pop(sid, None)
            except (SlurmError, OSError) as exc:  # they leave after idle_timeout anyway
                log.warning("could not let go of the allocations of %r: %s", self, exc)

    def cancel_allocations(self, root: Root) -> None:
        """``scancel`` every allocation serving this handler's queues (their jobs go back to the queue)."""
        for tracker in self._trackers.values():
            ours = set(self.history) | {str(hb["slurm_job_id"]) for hb in live_workers(root)
                                        if tracker.queue in hb.get("queues", []) and hb.get("slurm_job_id")}
            scancel(ours & set(squeue_states(job_name(root, tracker.queue))))  # only what Slurm still has
            tracker.submitted.clear()

    def __repr__(self):
        a = self.allocation
        shape = "".join(", {}={!r}".format(k, getattr(a, k)) for k in ("account", "qos", "constraint", "gres")
                        if getattr(a, k))
        queue = "queue_name={!r}, ".format(self.queue_name) if self.queue_name else ""
        return ("SlurmJobHandler({}partition={!r}, time_limit={!r}, slots={}, cpus_per_slot={}, "
                "memory_gb_per_slot={}, max_allocations={}{})".format(
                    queue, a.partition, a.time_limit, a.slots, a.cpus_per_slot,
                    a.memory_gb_per_slot, self.max_allocations, shape))
