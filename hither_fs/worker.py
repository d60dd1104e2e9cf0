"""The worker daemon: claims jobs from queues in the root and runs them.

``hither-fs worker --root R --queue Q`` is the one way jobs run outside the
submitting process: ``ParallelJobHandler`` starts such workers locally, and
Slurm allocations run the same command on compute nodes.

The worker is one thread in a loop of named steps (:meth:`Worker.step`):
reap the runs that ended and commit them, police the running ones (timeouts,
console output), read the requests left for it (stop, cancel), beat, take
back the jobs of lost workers, and claim new jobs for its free slots. Each
job runs in the slot's warm runner, or in a forked child if it has a
container (:mod:`hither_fs.attempts`, :mod:`hither_fs.runners`); the loop
sleeps until a run ends, a runner answers, or a submitter on the same host
wakes it. The protocol steps are :mod:`hither_fs.protocol`'s and the lease
rules :mod:`hither_fs.lease`'s.

What it costs the shared filesystem, which on a cluster is what matters: a
busy worker lists the front of its queue only when it has a free slot; an
idle one looks at the queue's bell once every 0.8 s (one open), beats every
10 s and checks leases every ``lease/3`` s - under two metadata operations a
second - and still starts a new job within a second of it being queued.
"""

import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

from . import gc, protocol
from .attempts import Attempt, Slots, remove_dead_scratch, scratch_root, slurm_facts
from .lease import DEFAULT_LEASE, Heartbeat, Host, LeaseJudge, Recovery
from .protocol import Claim, Status
from .queue import QueueReader, count_tickets, in_process_queue_gone, ticket_token
from .root import Root
from .runners import WAKE_SIGNAL, RunnerPool, local_workers, wake
from .runtime.files import CorruptFileError, listdir, remove_quietly
from .runtime.layout import check_queue_name, host_label
from .trust import CodeTrust

log = logging.getLogger("hither_fs.worker")

#: After this long without work a worker counts as idle: it stops listing its queues
#: and watches their bells instead, and beats less often.
IDLE_AFTER = 30.0
BELL_INTERVAL = 0.9
#: An idle worker holds no claims, so nobody judges its lease: it beats only for
#: ``hither-fs workers ls`` and for Slurm scaling, which count beats younger than 60 s.
IDLE_BEAT = 20.0
IDLE_RECOVERY = 15.0
LISTEN_AFTER_BELL = 2.0
NOFIT_MEMORY = 30.0
IDLE_LISTING = 30.0
PENDING_SWEEP = 30.0
#: How long a local worker's list of its sibling workers (see ``_wake_siblings``) is used.
SIBLINGS_MEMORY = 10.0
#: After failing to start a job (no fork: a process limit, memory), a worker claims nothing
#: for this long: the job it handed back is another worker's, or waits for this one to recover.
START_FAILED_PAUSE = 5.0


def new_worker_id(prefix: str = "w") -> str:
    return "{}-{}-{}-{}".format(prefix, host_label(), os.getpid(), uuid.uuid4().hex[:6])


class Worker:
    """A worker daemon serving one or more queues of a root.

    ``slots``: jobs run at once. ``cpus`` and ``memory_gb``: what the worker
    may use in all (a job's spec says what it needs; unlimited if None).
    ``idle_timeout``: exit after that many seconds with nothing to do.
    ``parent_pid``: a local worker's submitting process; once it is gone the
    worker drains its queues and exits.
    ``time_limit``: seconds this worker may live (a Slurm allocation's time
    limit). ``drain_margin`` seconds before that, running jobs are handed back
    to the queue for another worker, and jobs that cannot finish in time
    (their ``job_timeout`` says so) are not claimed. Slurm's warning signal
    (``sbatch --signal=B:USR1@N``) makes the worker stop claiming at once.
    ``lease``: seconds without a heartbeat after which this worker takes
    another's jobs back; it beats every ``heartbeat`` seconds while it holds
    jobs (by default five times per lease, at most every 2 s). ``clock`` and
    ``host`` are the worker's monotonic clock and host identity (tests give
    their own).

    Signals: SIGTERM or SIGINT let running jobs finish, then the worker exits;
    inside a Slurm allocation SIGTERM means the allocation is being cancelled,
    so running jobs are handed back at once instead.
    """

    def __init__(self, root: Root, queues: List[str], slots: int = 1, *,
                 cpus: Optional[float] = None, memory_gb: Optional[float] = None,
                 idle_timeout: Optional[float] = None, lease: float = DEFAULT_LEASE,
                 heartbeat: Optional[float] = None,
                 parent_pid: Optional[int] = None, max_jobs: Optional[int] = None,
                 time_limit: Optional[float] = None, drain_margin: float = 20.0,
                 worker_id: Optional[str] = None, clock: Callable[[], float] = time.monotonic,
                 host: Optional[Host] = None, shape: Optional[Dict[str, Any]] = None):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.root = root
        self.queues = [check_queue_name(q) for q in queues]
        self.slots = slots
        self.cpus = cpus
        self.memory_gb = memory_gb
        self.idle_timeout = idle_timeout
        self.heartbeat_interval = heartbeat if heartbeat is not None else min(2.0, lease / 5)
        self.parent_pid = parent_pid
        self.max_jobs = max_jobs
        self.drain_margin = drain_margin
        self.clock = clock
        self.id = worker_id or new_worker_id()
        self.in_slurm = bool(os.environ.get("SLURM_JOB_ID"))
        now = clock()
        self.deadline = None if time_limit is None else now + time_limit - drain_margin
        self.stopping = False   # claim nothing more; exit when running jobs are done
        self.draining = False   # claim nothing more (the allocation is ending)
        self.stop_signal = 0
        self.warning_signal = 0
        self.scratch = scratch_root(self.id)
        self.code_trust = CodeTrust(root, sys.path)  # who may write the code a job imports
        self.runners = RunnerPool(root.path, slots, self.scratch, key=self.code_trust.uids, prepare=self.code_trust.guard_imports)
        self.runs = Slots(root, self.id, self.scratch, tick=self._tick, code_trust=self.code_trust,
                          runners=self.runners, promoted=self._wake_siblings)
        self.readers = {q: QueueReader(root.layout, q, clock=clock) for q in self.queues}
        self.judge = LeaseJudge(lease, host=host, clock=clock)
        self.recovery = Recovery(root, self.judge, me=self.id)
        self.heartbeat = Heartbeat(root, self.id, {"queues": self.queues, "slots": slots, "cpus": cpus,
                                                  "memory_gb": memory_gb, "lease": lease,
                                                  **({"shape": shape} if shape else {}),
                                                  **slurm_facts()}, host=host)
        self._specs: "OrderedDict[str, Any]" = OrderedDict()  # recently read specs (jobs seen but not taken)
        self._pending_seen: Dict[str, float] = {}
        self._complained: Dict[Any, float] = {}
        self._nofit: Dict[str, float] = {}  # jobs that did not fit when looked at: skipped for a while
        self._pending_queue: Dict[str, Any] = {}  # pending job id -> its queue (specs never change)
        self._listen_until = -1e9
        self.last_active = now
        self._last_beat = now
        self._interval = 0.001
        self._due = {"beat": now, "requests": now, "recover": now, "pending": now,
                     "bell": now, "listing": now, "siblings": now, "claim": now}
        self._siblings: List[int] = []

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        reason = self.root.unsafe_reason()
        if reason:
            raise PermissionError("refusing to run jobs from {}: {}".format(self.root.path, reason))
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_warning_signal)
        # SIGCHLD and WAKE_SIGNAL stay pending while blocked, so the loop can sleep in
        # sigtimedwait and wake the moment a job process exits, a runner answers, or a
        # submitter on this host queues a job.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, WAKE_SIGNAL})
        for gone in remove_dead_scratch():  # (also checks that the scratch directory is this user's alone)
            log.info("removed the scratch directory %s of a worker that was killed", gone)
        os.makedirs(self.scratch, mode=0o700, exist_ok=True)
        try:
            removed = gc.apply_retention(self.root)
            if removed:
                log.info("retention: removed %d old worker logs and directories of long-dead workers", len(removed))
        except Exception as exc:  # housekeeping must never stop a worker
            log.warning("retention not applied: %s", exc)
        protocol.set_taker(self.id)  # tokens this worker takes are judged by its heartbeat
        log.info("worker %s serving %s in %s with %d slot(s)", self.id, self.queues, self.root.path, self.slots)
        try:
            while True:
                try:
                    if self.step():
                        break
                except Exception:
                    # a damaged file or a full disk must not end the worker: report, back off, go on
                    log.exception("worker %s: error in its loop, carrying on", self.id)
                    time.sleep(0.5)
                self.sleep()
        finally:
            self.runs.hand_back_all("its worker stopped", counted=False)
            self.runners.close()
            self.heartbeat.remove()
            with contextlib.suppress(OSError):
                os.rmdir(self.scratch)
        log.info("worker %s exits after %d job(s)", self.id, self.runs.jobs_done)
        return 0

    def step(self) -> bool:
        """One pass of the loop; True when the worker should exit now."""
        now = self.clock()
        self._safely(self.reap)
        if self.handle_stop_conditions(now):
            return True
        for part in (self.police, self.read_requests, self.beat, self.retry_commits, self.recover,
                     self.sweep_pending):
            self._safely(part, now)
        if not (self.stopping or self.draining):
            self._safely(self.claim, now)
        return self.should_exit(now)

    def _safely(self, part: Callable[..., Any], *args: Any) -> None:
        """Run one part of the loop; a damaged file or a full disk in one part must not keep
        the others from running (a heartbeat that cannot be written must not stop commits)."""
        try:
            part(*args)
        except Exception as exc:
            key = (part.__name__, type(exc).__name__)
            now = self.clock()
            if now - self._complained.get(key, -1e9) >= 60:  # once a minute, not on every pass
                self._complained[key] = now
                log.exception("worker %s: %s failed, carrying on", self.id, part.__name__)

    def sleep(self) -> None:
        """Until a job process exits or the next poll is due."""
        idle = self._idle(self.clock())
        if self.running:
            timeout = 0.25 if len(self.running) >= self.slots else self._interval
        else:
            timeout = BELL_INTERVAL if idle else self._interval
        if signal.sigtimedwait({signal.SIGCHLD, WAKE_SIGNAL}, timeout) is not None:
            self._interval = 0.001  # something happened: look again soon
        else:
            self._interval = min(0.25, self._interval * 1.5)

    def _wake_siblings(self, promoted: int) -> None:
        """Jobs this worker has just queued (those that waited for the job it committed) are
        for the other local workers of its submitting process too: wake them now, rather
        than leave the jobs to their next look at the queue (up to ``BELL_INTERVAL`` when
        idle). They are looked up at most every ``SIBLINGS_MEMORY`` seconds."""
        if self.parent_pid is None:
            return
        now = self.clock()
        if now >= self._due["siblings"]:
            self._siblings = [p for p in local_workers(self.parent_pid, self.root.path) if p != os.getpid()]
            self._due["siblings"] = now + SIBLINGS_MEMORY
        for pid in self._siblings:
            wake(pid)

    def _active(self) -> None:
        self.last_active = self.clock()
        self._interval = 0.001

    # -- claiming ---------------------------------------------------------------------------

    def claim(self, now: float) -> bool:
        """Fill free slots from the front of the queues."""
        if len(self.running) >= self.slots or self._at_max_jobs() or now < self._due["claim"]:
            return False
        if self._idle(now) and now < self._due["listing"]:
            # idle: one open of each bell instead of listing the queues
            if not any([self.readers[q].bell_rang() for q in self.queues]):
                return False
            # someone rang: list the queues for a moment (a ticket may follow the ring), but
            # stay idle unless a job comes this way (another worker may have taken it)
            self._listen_until = now + LISTEN_AFTER_BELL
            self._interval = 0.001
        self._due["listing"] = now + IDLE_LISTING
        claimed = False
        for q in self.queues:
            reader = self.readers[q]
            while len(self.running) < self.slots and not self._at_max_jobs():
                if not self._claim_one(q, reader):
                    break
                claimed = True
        if claimed:
            self._active()
        return claimed

    def _claim_one(self, queue: str, reader: QueueReader) -> bool:
        """Claim one job and start it. A worker with limits (CPUs, memory, a deadline)
        reads a job's spec before it claims, to see whether it fits; others claim first
        and read the spec after, so a ticket lost to another worker costs one rename."""
        limited = self.cpus is not None or self.memory_gb is not None or self.deadline is not None
        now = self.clock()
        for job_id in [j for j, t in self._nofit.items() if now - t > NOFIT_MEMORY]:
            del self._nofit[job_id]
        for path in reader.candidates(skip=self._nofit):
            reader.drop(path)
            token = protocol.Token.parse(ticket_token(os.path.basename(path)))
            if token is None:
                continue  # a stray file: not a ticket (fsck reports it)
            if token.job_id in self.running:
                continue  # a lost run of it (taken back while this worker was stopped) is not reaped yet
            checked = None
            if limited:
                try:
                    checked = self._spec(token.job_id)
                except (FileNotFoundError, protocol.JobDirectoryError) as exc:
                    self._drop_orphan(path, token, exc)
                    continue
                except (CorruptFileError, OSError, ValueError):
                    checked = None  # claimed below, then failed with the damage named
                else:
                    if not self._fits(checked[0]):
                        self._nofit[token.job_id] = now  # skipped until a slot frees (or a while passes)
                        continue
            claim = protocol.claim(self.root, path, self.id)
            if claim is None:
                reader.lost(path)  # another worker was first
                continue
            self._specs.pop(token.job_id, None)
            try:
                spec, unsafe = checked if checked is not None else protocol.read_spec_checked(self.root, token.job_id)
            except (FileNotFoundError, protocol.JobDirectoryError) as exc:
                self._drop(claim, exc)
                continue
            except (CorruptFileError, OSError, ValueError) as exc:
                self._finish_now(claim, protocol.error_record("CorruptFileError", str(exc), "claiming"))
                return True
            claim.spec = spec
            unsafe = unsafe or self.code_trust.job_reason(spec)
            if unsafe:
                message = "refusing to run job {}: {}".format(token.job_id, unsafe)
                log.warning("%s", message)
                self._finish_now(claim, protocol.error_record("PermissionError", message, "claiming",
                                                              module="builtins"))
                return True
            if not self.runs.start(claim):  # handed back: not again at once, by this worker
                self._due["claim"] = now + START_FAILED_PAUSE
                return False
            return True
        return False

    def _spec(self, job_id: str):
        cached = self._specs.get(job_id)
        if cached is None:
            cached = protocol.read_spec_checked(self.root, job_id)
            self._specs[job_id] = cached
            while len(self._specs) > 1000:
                self._specs.popitem(last=False)
        return cached

    def _drop_orphan(self, path: str, token: protocol.Token, why: Exception) -> None:
        claim = protocol.claim(self.root, path, self.id)
        if claim is not None:
            self._drop(claim, why)

    def _drop(self, claim: Claim, why: Exception) -> None:
        """Take a job out of the queue that nothing can be recorded for: its directory is
        gone (deleted by hand), or is not a directory (its waiters are told so)."""
        what = "is not in the root" if isinstance(why, FileNotFoundError) else "cannot be recorded: {}".format(why)
        log.warning("dropped job %s: it %s", claim.job_id, what)
        remove_quietly(claim.path)

    def _finish_now(self, claim: Claim, error: Dict[str, Any]) -> None:
        """Commit a claimed job as failed without running it (by the next reap)."""
        self.runs.refuse(claim, error)

    def _fits(self, spec: Dict[str, Any]) -> bool:
        """Whether a job's needs fit in what is free now (and in the time left)."""
        need = spec.get("resources") or {}
        for key, capacity in (("cpus", self.cpus), ("memory_gb", self.memory_gb)):
            if capacity is not None and need.get(key):
                if self.runs.used(key) + need[key] > capacity + 1e-9:
                    return False
        timeout = spec.get("timeout")
        if self.deadline is not None and timeout and self.clock() + timeout > self.deadline:
            return False
        return True

    def _at_max_jobs(self) -> bool:
        return self.max_jobs is not None and self.jobs_done + len(self.running) >= self.max_jobs

    # -- running (see hither_fs.attempts.Slots) -----------------------------------------------

    @property
    def running(self) -> Dict[str, Attempt]:
        return self.runs.running

    @property
    def jobs_done(self) -> int:
        return self.runs.jobs_done

    def police(self, now: float) -> None:
        self.runs.police()

    def reap(self, block: bool = False) -> bool:
        """Commit the runs that ended."""
        if not self.runs.reap(block, stopping=bool(self.stop_signal)):
            return False
        self._nofit.clear()  # resources were freed: what did not fit may fit now
        self._active()
        return True

    def _tick(self) -> None:
        """Called during long commits (many jobs waiting on one): keep beating."""
        self._safely(self.beat, self.clock())

    def retry_commits(self, now: float) -> None:
        """Every few seconds, commit again what the root could not take."""
        if self.runs.uncommitted and now >= self._due.get("retry", -1e9):
            self._due["retry"] = now + 2.0
            self.runs.retry()

    # -- requests, heartbeat, leases -----------------------------------------------------------

    def read_requests(self, now: float) -> None:
        """Stop and cancel requests left in this worker's directory: every second while it
        runs jobs, at each heartbeat otherwise."""
        if now < self._due["requests"]:
            return
        self._due["requests"] = now + (1.0 if self.running else self._beat_interval(now))
        directory = self.root.layout.worker_dir(self.id)
        for name in listdir(directory):
            if name == "stop" and not self.stopping:
                self.stopping = True
                log.info("worker %s: stop requested, finishing running jobs and exiting", self.id)
            elif name.startswith("cancel."):
                job_id = name[len("cancel."):]
                attempt = self.running.get(job_id)
                if attempt is not None:
                    attempt.kill(protocol.cancelled_record(job_id, "while running"))
                remove_quietly(os.path.join(directory, name))

    def _idle(self, now: float) -> bool:
        return (not self.running and not self.runs.uncommitted and now - self.last_active >= IDLE_AFTER
                and now >= self._listen_until)

    def _beat_interval(self, now: float) -> float:
        return IDLE_BEAT if self._idle(now) else self.heartbeat_interval

    def beat(self, now: float) -> None:
        """On time, and within half a second of a change of the running jobs."""
        jobs = sorted(self.running)
        changed = jobs != self.heartbeat.info.get("jobs") and now - self._last_beat >= 0.5
        if now < self._due["beat"] and not changed:
            return
        self.heartbeat.beat(jobs=jobs, state="stopping" if self.stopping else
                            "draining" if self.draining else "running")
        self._last_beat = now
        self._due["beat"] = now + self._beat_interval(now)

    def recover(self, now: float) -> None:
        """Every lease/3 s: hand back the jobs of lost workers, and check this worker's own claims."""
        if now < self._due["recover"]:
            return
        self._due["recover"] = now + (max(IDLE_RECOVERY, self.judge.lease / 3) if self._idle(now)
                                      else self.judge.lease / 3)
        claims, taken = protocol.scan_running(self.root)
        mine = {token.job_id: (token, path) for token, path in claims if token.worker == self.id}
        for job_id, (token, path) in mine.items():
            if job_id not in self.running and not any(a.claim.path == path for a, _ in self.runs.uncommitted):
                # a claim this worker does not know it made (the answer to its rename was lost)
                protocol.requeue(self.root, token, path, "claimed but never started", counted=False)
        for job_id, attempt in self.running.items():
            if job_id not in mine and attempt.pid > 0 and not attempt.lost \
                    and attempt.started_mono < now - 5.0 and not os.path.lexists(attempt.claim.path):
                # this worker was judged lost (it was stopped, or cut off) and its job handed back:
                # the run is useless now; its outcome will be discarded anyway
                log.warning("job %s was taken back from worker %s; stopping its run", job_id, self.id)
                attempt.lost = True
                attempt.kill()
        self.recovery.run(claims, taken)

    def sweep_pending(self, now: float) -> None:
        if now >= self._due["pending"]:
            self._due["pending"] = now + PENDING_SWEEP
            protocol.sweep_pending(self.root, self._pending_seen, now)

    # -- stopping ---------------------------------------------------------------------------------

    def _on_stop_signal(self, signum, frame) -> None:
        # only flags: a handler that did I/O could interrupt the loop's own writes
        self.stop_signal = signum

    def _on_warning_signal(self, signum, frame) -> None:
        self.warning_signal = signum

    def handle_stop_conditions(self, now: float) -> bool:
        """Act on signals and the deadline; True means exit now."""
        if self.stop_signal and not self.stopping:
            self.stopping = True
            if self.in_slurm and self.stop_signal == signal.SIGTERM:
                log.warning("worker %s: allocation cancelled, handing back %d job(s)", self.id, len(self.running))
                self.runs.hand_back_all("its Slurm allocation was cancelled", counted=True)
                return True
            log.info("worker %s: signal %d, finishing running jobs and exiting", self.id, self.stop_signal)
        if self.warning_signal and not self.draining:
            self.draining = True
            log.info("worker %s: end-of-allocation warning, claiming no more jobs", self.id)
        if self.deadline is not None and now >= self.deadline:
            if self.running:
                log.warning("worker %s: time limit near, handing back %d job(s)", self.id, len(self.running))
            self.runs.hand_back_all("its worker reached the end of its time limit", counted=False)
            return True
        return False

    def should_exit(self, now: float) -> bool:
        if self.running or self.runs.uncommitted:
            return False
        if self.stopping:
            return True
        if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
            return True
        idle_for = now - self.last_active
        if self.idle_timeout is not None and idle_for >= self.idle_timeout:
            return True
        if self.parent_pid is not None and os.getppid() != self.parent_pid and idle_for >= 1.0:
            return not self._work_left()  # the submitter is gone: drain, then go
        return False

    def _work_left(self) -> bool:
        if any(count_tickets(self.root.layout, q, cap=1) for q in self.queues):
            return True
        for token in protocol.pending_tokens(self.root):
            queue = self._pending_queue.get(token.job_id)
            if queue is None:
                try:
                    queue = self._pending_queue[token.job_id] = protocol.read_spec(self.root, token.job_id).get("queue")
                except (OSError, CorruptFileError):
                    continue
            if queue in self.queues and not self._stranded(token.job_id):
                return True
        return False

    def _stranded(self, job_id: str, depth: int = 0) -> bool:
        """Whether a pending job can never run: one of its upstream jobs waits in the in-process
        queue of a process of this host that has ended (nothing will run it), or is pending and
        stranded in turn. A worker whose submitter is gone does not wait for such jobs."""
        try:
            upstream = protocol.read_spec(self.root, job_id).get("upstream") or []
        except (OSError, CorruptFileError, ValueError, AttributeError):
            return False
        for up in upstream:
            try:
                state = protocol.read_state(self.root, up)
            except (OSError, CorruptFileError, ValueError):
                continue
            status = state.get("status")
            if status == Status.QUEUED and in_process_queue_gone(state.get("queue")):
                return True
            if status == Status.PENDING and depth < 100 and self._stranded(up, depth + 1):
                return True
        return False
