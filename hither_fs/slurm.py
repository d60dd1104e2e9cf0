"""Slurm: worker allocations through ``sbatch``, and the handler that scales them.

This module is the only one that talks to Slurm. It runs three commands,
always as argument lists: ``sbatch`` (once per allocation, never per job),
``squeue`` (one batched call per interval, only for allocations that have
not yet shown a heartbeat) and ``scancel``. It never uses ``sacct``: many
clusters have no accounting. What a running allocation is doing comes from
the root - the heartbeat files of its worker - not from Slurm.
"""

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, Optional

from . import protocol
from .handlers import JobHandler
from .lease import LeaseJudge, Recovery
from .queue import count_tickets
from .root import Root
from .runtime.code import stop_if_loading_script
from .runtime.files import CorruptFileError, fs_clock, listdir, makedirs, read_json
from .runtime.layout import check_queue_name, is_worker_id

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "worker.sbatch")
_FINAL_SLURM_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                       "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmError(RuntimeError):
    """A Slurm command failed; the message has its output."""


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
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise SlurmError("{} failed (exit {}): {}".format(" ".join(cmd[:2]), proc.returncode,
                                                        (proc.stderr or proc.stdout).strip()))
    return proc.stdout


class Allocation:
    """What one worker allocation asks of Slurm, and how to submit it."""

    def __init__(self, *, partition: Optional[str] = None, time_limit: str = "01:00:00",
                 slots: int = 4, cpus_per_slot: int = 1, memory_gb_per_slot: float = 2.0,
                 idle_timeout: float = 120.0, warning_lead: int = 120, drain_margin: float = 20.0,
                 sbatch_args: Iterable[str] = (), python: Optional[str] = None, lease: float = 30.0):
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

    @property
    def cpus(self) -> int:
        return self.slots * self.cpus_per_slot

    @property
    def memory_gb(self) -> float:
        return self.slots * self.memory_gb_per_slot

    def sbatch_command(self, root: Root, queue_name: str) -> List[str]:
        log_dir = os.path.join(root.path, "logs", "slurm")
        makedirs(log_dir)
        cmd = ["sbatch", "--parsable",
               "--job-name={}".format(job_name(root, queue_name)),
               "--time={}".format(format_slurm_time(self.seconds)),
               "--cpus-per-task={}".format(self.cpus),
               "--mem={}M".format(int(math.ceil(self.memory_gb * 1024))),
               "--signal=B:USR1@{}".format(self.warning_lead),
               "--output={}".format(os.path.join(log_dir, "%j.log")),
               "--export=ALL"]
        if self.partition:
            cmd.append("--partition={}".format(self.partition))
        return cmd + self.sbatch_args + [TEMPLATE]

    def environment(self, root: Root, queue_name: str) -> Dict[str, str]:
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # no HITHER_FS_TIME_LIMIT: the script asks Slurm for the time left when the worker
        # starts, so the deadline counts from the allocation's start, not the worker's
        env.pop("HITHER_FS_TIME_LIMIT", None)
        env.update(HITHER_FS_ROOT=root.path, HITHER_FS_QUEUE=queue_name, HITHER_FS_SLOTS=str(self.slots),
                   HITHER_FS_PYTHON=self.python, HITHER_FS_IDLE_TIMEOUT=str(self.idle_timeout),
                   HITHER_FS_MEMORY_GB=str(self.memory_gb), HITHER_FS_DRAIN_MARGIN=str(self.drain_margin),
                   HITHER_FS_LEASE=str(self.lease),
                   PYTHONPATH=os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p))
        return env

    def submit(self, root: Root, queue_name: str) -> str:
        """``sbatch`` one allocation; return its Slurm job id."""
        out = _run(self.sbatch_command(root, queue_name), env=self.environment(root, queue_name))
        return out.strip().split(";")[0]


def job_name(root: Root, queue_name: str) -> str:
    """The Slurm job name of an allocation: its queue, and a short hash of its root (so two
    roots' allocations of the same queue are told apart)."""
    return "hither-fs-{}-{}".format(queue_name, hashlib.sha1(root.path.encode()).hexdigest()[:8])


def squeue_states(name: str) -> Dict[str, str]:
    """One ``squeue`` call: ``{job id: state}`` of this user's Slurm jobs called ``name``.

    Asking by name rather than by id also sees allocations submitted by other
    processes, and never fails on ids Slurm has already forgotten.
    """
    out = _run(["squeue", "--noheader", "--me", "--name=" + name, "--format=%i %T"])
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def scancel(job_ids: Iterable[str]) -> None:
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel"] + ids)


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
    """

    def __init__(self, *, partition: Optional[str] = None, time_limit: str = "01:00:00",
                 cpus_per_slot: int = 1, memory_gb_per_slot: float = 2.0, slots: int = 4,
                 max_allocations: int = 2, sbatch_args: Iterable[str] = (), idle_timeout: float = 120.0,
                 warning_lead: int = 120, drain_margin: float = 20.0, queue_name: str = "slurm",
                 squeue_interval: float = 10.0, lease: float = 30.0):
        stop_if_loading_script("hi.SlurmJobHandler()")
        if isinstance(max_allocations, bool) or not isinstance(max_allocations, int) or max_allocations < 1:
            raise ValueError("max_allocations must be a positive integer, not {!r}".format(max_allocations))
        self.allocation = Allocation(partition=partition, time_limit=time_limit, slots=slots,
                                     cpus_per_slot=cpus_per_slot, memory_gb_per_slot=memory_gb_per_slot,
                                     idle_timeout=idle_timeout, warning_lead=warning_lead,
                                     drain_margin=drain_margin, sbatch_args=sbatch_args, lease=lease)
        self.max_allocations = max_allocations
        self.queue_name = check_queue_name(queue_name)
        self.squeue_interval = squeue_interval
        self.submitted_allocations: Dict[str, float] = {}  # not yet beating: Slurm job id -> when submitted
        self.history: List[str] = []  # every allocation this handler submitted
        self._next_look = 0.0
        self._next_squeue = 0.0
        self._squeue_backoff = squeue_interval
        self._in_slurm: set = set()  # allocations Slurm listed at the last look
        self._pending_queue: Dict[str, Any] = {}
        self.lease = lease
        self._recovery: Dict[str, Recovery] = {}

    def queue_for(self, root: Root) -> str:
        return self.queue_name

    def check(self, spec) -> None:
        timeout = spec.get("timeout")
        usable = self.allocation.seconds - self.allocation.drain_margin
        if timeout and timeout > usable:
            raise ValueError("job_timeout {} s cannot fit in an allocation whose time limit {} leaves {} s "
                             "for jobs; raise time_limit".format(timeout, self.allocation.time_limit, usable))

    def resources_for(self, requested):
        need = {"cpus": self.allocation.cpus_per_slot, "memory_gb": self.allocation.memory_gb_per_slot}
        need.update(requested or {})
        for key, total in (("cpus", self.allocation.cpus), ("memory_gb", self.allocation.memory_gb)):
            if need[key] > total:
                raise ValueError("a job asking for {} {} cannot fit in an allocation of {} {}".format(
                    need[key], key, total, key))
        return need

    def submitted(self, root: Root, job) -> None:
        self.scale(root)  # at most once a second: submitting many jobs stays cheap

    def help(self, root: Root) -> None:
        self.scale(root)

    # -- scaling -------------------------------------------------------------------

    def demand(self, root: Root, workers: List[Dict[str, Any]], cap: int) -> int:
        """Jobs of this queue that are queued, pending or running - counted no further than
        ``cap`` (the root is never read whole for this)."""
        count = count_tickets(root.layout, self.queue_name, cap=cap)
        for hb in workers:
            count += len(hb.get("jobs") or [])
        for token in protocol.pending_tokens(root):
            if count >= cap:
                break
            queue = self._pending_queue.get(token.job_id)
            if queue is None:
                try:
                    queue = self._pending_queue[token.job_id] = protocol.read_spec(root, token.job_id).get("queue")
                except (OSError, CorruptFileError):
                    continue
            count += queue == self.queue_name
        return count

    def scale(self, root: Root) -> List[str]:
        """Submit the allocations the queue needs now; return their Slurm ids."""
        now = time.monotonic()
        if now < self._next_look:
            return []
        self._next_look = now + 1.0
        recovery = self._recovery.get(root.path)
        if recovery is None:
            recovery = self._recovery[root.path] = Recovery(root, LeaseJudge(self.lease))
        recovery.run()  # jobs of allocations that died get back in the queue
        # every live allocation counts against max_allocations, draining ones too:
        # their replacement is submitted when they leave
        workers = [hb for hb in live_workers(root) if self.queue_name in hb.get("queues", [])]
        demand = self.demand(root, workers, cap=self.max_allocations * self.allocation.slots + 1)
        need = min(self.max_allocations, math.ceil(demand / self.allocation.slots))
        if need <= len(workers):
            return []
        self._look_at_slurm(root, now)
        beating = {str(hb.get("slurm_job_id")) for hb in workers}
        starting = (self._in_slurm | set(self.submitted_allocations)) - beating
        new = []
        for _ in range(need - len(workers) - len(starting)):
            sid = self.allocation.submit(root, self.queue_name)
            self.submitted_allocations[sid] = now
            self.history.append(sid)
            new.append(sid)
        return new

    def _look_at_slurm(self, root: Root, now: float) -> None:
        """Which allocations of this queue Slurm has, pending or running: one batched
        ``squeue`` per interval at most, backing off while it fails."""
        if now < self._next_squeue:
            return
        try:
            states = squeue_states(job_name(root, self.queue_name))
        except (SlurmError, subprocess.TimeoutExpired):
            self._squeue_backoff = min(self._squeue_backoff * 2, 300.0)
            self._next_squeue = now + self._squeue_backoff
            return
        self._squeue_backoff = self.squeue_interval
        self._next_squeue = now + self.squeue_interval
        self._in_slurm = {sid for sid, state in states.items()
                          if state not in _FINAL_SLURM_STATES and state != "COMPLETING"}
        # what squeue lists speaks for itself; keep only submissions too recent to be listed
        self.submitted_allocations = {sid: t for sid, t in self.submitted_allocations.items()
                                      if sid not in states and now - t < 2 * self.squeue_interval}

    def cancel_allocations(self, root: Root) -> None:
        """``scancel`` every allocation serving this handler's queue (their jobs go back to the queue)."""
        ours = set(self.history) | {str(hb["slurm_job_id"]) for hb in live_workers(root)
                                    if self.queue_name in hb.get("queues", []) and hb.get("slurm_job_id")}
        scancel(ours & set(squeue_states(job_name(root, self.queue_name))))  # only what Slurm still has
        self.submitted_allocations.clear()

    def __repr__(self):
        a = self.allocation
        return ("SlurmJobHandler(queue={!r}, partition={!r}, time_limit={!r}, slots={}, cpus_per_slot={}, "
                "memory_gb_per_slot={}, max_allocations={})".format(
                    self.queue_name, a.partition, a.time_limit, a.slots, a.cpus_per_slot,
                    a.memory_gb_per_slot, self.max_allocations))
