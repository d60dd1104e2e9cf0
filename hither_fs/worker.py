"""The worker daemon: claims jobs from queues in the root and runs them.

``hither-fs worker --root R --queue Q`` is the one way jobs run outside the
submitting process: ``ParallelJobHandler`` starts such workers locally, and
Slurm allocations run the same command on compute nodes.

The worker is one thread in a polling loop. Each job runs in a forked child
in its own session (so a timeout or cancel kills the whole process tree);
the child's stdout and stderr go to files in the attempt directory; the
parent measures wall and CPU time and peak memory with ``os.wait4`` and
commits the outcome. The worker writes a heartbeat file, and while it runs it
also watches the other workers' heartbeats: a job whose worker has died is
handed back to the queue (see :mod:`hither_fs.queue`).
"""

import logging
import os
import signal
import socket
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

import psutil

from . import queue
from .cache import JobCache
from .root import ERROR, FINISHED, Root, now_iso
from .containers import run_container_attempt
from .runtime.execute import redirect_console, run_attempt
from .runtime.files import CorruptFileError, file_mode, read_json, remove_quietly, write_json
from .runtime.layout import check_queue_name, is_job_id

log = logging.getLogger("hither_fs.worker")

HOST = socket.gethostname()


def new_worker_id(prefix: str = "w") -> str:
    return "{}-{}-{}-{}".format(prefix, HOST.split(".")[0], os.getpid(), uuid.uuid4().hex[:6])


def record_in_cache(root: Root, spec: Dict[str, Any], status: Optional[str]) -> None:
    """After a commit: remember the outcome in the job's cache, if it has one."""
    cache_spec = spec.get("cache")
    if not cache_spec or status is None:
        return
    cache = JobCache(cache_spec.get("path"))
    job_id = spec["id"]
    if status == FINISHED:
        cache.record(root, spec["key"], spec, root.read_job_file(job_id, "result.json"), is_error=False,
                     replace=bool(cache_spec.get("replace")))
    elif status == ERROR and cache_spec.get("failing"):
        cache.record(root, spec["key"], spec, root.read_job_file(job_id, "error.json"), is_error=True)
    cache.clear_in_flight(root, spec["key"], job_id)


def kill_tree(pid: int) -> None:
    """SIGKILL a job process, its process group and any descendant that left it."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    for proc in descendants:
        try:
            proc.kill()
        except psutil.Error:
            pass


def base_runtime(worker_id: str) -> Dict[str, Any]:
    info = {"host": HOST, "worker": worker_id, "python": sys.version.split()[0]}
    for var, key in (("SLURM_JOB_ID", "slurm_job_id"), ("SLURMD_NODENAME", "slurm_node")):
        if os.environ.get(var):
            info[key] = os.environ[var]
    return info


class Heartbeat:
    """The file ``workers/<id>.json`` that tells others this worker is alive.

    ``beat`` is a counter, not a timestamp: observers judge liveness by
    whether it advances on their own clock, since node clocks disagree.
    """

    def __init__(self, root: Root, worker_id: str, info: Dict[str, Any]):
        self.root = root
        self.path = root.layout.worker_file(worker_id)
        self.info = dict(info, id=worker_id, host=HOST, pid=os.getpid(),
                         create_time=psutil.Process().create_time(), started=now_iso())
        self.beat_count = 0

    def beat(self, **fields: Any) -> None:
        self.beat_count += 1
        self.info.update(fields, beat=self.beat_count, last_beat=now_iso())
        self.root.makedirs(os.path.dirname(self.path))
        write_json(self.path, self.info)

    def remove(self) -> None:
        remove_quietly(self.path)
        remove_quietly(self.root.layout.worker_stop_request(self.info["id"]))


class LeaseWatcher:
    """Decides when a running job's worker is gone.

    Same host: the worker's pid is dead or belongs to another process (create
    time differs) - known at once. Other hosts: its heartbeat counter has not
    advanced for ``lease`` seconds, measured on this process's clock.
    """

    def __init__(self, root: Root, lease: float):
        self.root = root
        self.lease = lease
        self.seen: Dict[str, Any] = {}  # worker id -> (beat or None, local time it last changed)

    def lost_reason(self, worker_id: str) -> Optional[str]:
        hb = read_json(self.root.layout.worker_file(worker_id), None, missing_ok=True) if worker_id else None
        now = time.monotonic()
        if hb and hb.get("host") == HOST:
            try:
                # a tolerance: create times are derived from the boot time, which moves with clock steps
                alive = abs(psutil.Process(hb["pid"]).create_time() - hb["create_time"]) < 1.0
            except psutil.Error:
                alive = False
            if not alive:
                return "worker {} (pid {} on {}) is dead".format(worker_id, hb["pid"], HOST)
        beat = hb.get("beat") if hb else None
        last = self.seen.get(worker_id)
        if last is None or last[0] != beat:
            self.seen[worker_id] = (beat, now)
            return None
        if now - last[1] > self.lease:
            what = "heartbeat stopped" if hb else "no heartbeat file"
            return "worker {}: {} for {:.0f} s".format(worker_id, what, now - last[1])
        return None

    def recover(self, skip: str = "") -> int:
        """Hand back the jobs of lost workers; return how many."""
        count = 0
        for job_id, ticket in list(queue.running_jobs(self.root)):
            worker_id = ticket.get("worker")
            if worker_id == skip:
                continue
            why = self.lost_reason(worker_id)
            if why:
                try:
                    if queue.requeue_lost(self.root, job_id, worker_id, ticket.get("attempt"), why):
                        log.warning("job %s handed back: %s", job_id, why)
                        count += 1
                except FileNotFoundError:
                    remove_quietly(self.root.layout.running_ticket(job_id))
        return count


class _Running:
    def __init__(self, claim: queue.Claim, pid: int):
        self.claim = claim
        self.pid = pid
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.failure: Optional[Dict[str, Any]] = None


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

    Signals: SIGTERM or SIGINT let running jobs finish, then the worker exits;
    inside a Slurm allocation SIGTERM means the allocation is being cancelled,
    so running jobs are handed back at once instead.
    """

    def __init__(self, root: Root, queues: List[str], slots: int = 1, *,
                 cpus: Optional[float] = None, memory_gb: Optional[float] = None,
                 idle_timeout: Optional[float] = None, lease: float = 30.0, heartbeat: float = 2.0,
                 parent_pid: Optional[int] = None, max_jobs: Optional[int] = None,
                 time_limit: Optional[float] = None, drain_margin: float = 20.0,
                 worker_id: Optional[str] = None):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.root = root
        self.queues = [check_queue_name(q) for q in queues]
        self.slots = slots
        self.cpus = cpus
        self.memory_gb = memory_gb
        self.idle_timeout = idle_timeout
        self.heartbeat_interval = heartbeat
        self.parent_pid = parent_pid
        self.max_jobs = max_jobs
        self.drain_margin = drain_margin
        self.deadline = None if time_limit is None else time.monotonic() + time_limit - drain_margin
        self.id = worker_id or new_worker_id()
        self.running: Dict[int, _Running] = {}
        self.stopping = False   # claim nothing more; exit when running jobs are done
        self.draining = False   # claim nothing more (the allocation is ending)
        self.stop_signal = 0
        self.warning_signal = 0
        self.uncommitted: List[Any] = []  # (run, runtime, failure) whose commit failed: retried
        self.in_slurm = bool(os.environ.get("SLURM_JOB_ID"))
        self.jobs_done = 0
        self.watcher = LeaseWatcher(root, lease)
        self.heartbeat = Heartbeat(root, self.id, {"queues": self.queues, "slots": slots, "cpus": cpus,
                                                  "memory_gb": memory_gb, **base_runtime(self.id)})

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        reason = self.root.unsafe_reason()
        if reason:
            raise PermissionError("refusing to run jobs from {}: {}".format(self.root.path, reason))
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_warning_signal)
        # SIGCHLD stays pending while blocked, so the loop can sleep in
        # sigtimedwait and wake the moment a job process exits.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        log.info("worker %s serving %s in %s with %d slot(s)", self.id, self.queues, self.root.path, self.slots)
        interval = 0.001
        now = time.monotonic()
        next_beat = next_lease = next_pending = now
        idle_since = now
        try:
            while True:
                try:
                    busy = self._reap()
                    now = time.monotonic()
                    if self._handle_stop_conditions(now):
                        break
                    self._police()
                    # beat on time, and within half a second of a change of the running jobs
                    jobs = sorted(r.claim.job_id for r in self.running.values())
                    if now >= next_beat or (jobs != self.heartbeat.info.get("jobs")
                                            and now >= next_beat - self.heartbeat_interval + 0.5):
                        self.heartbeat.beat(jobs=jobs, state="stopping" if self.stopping else
                                            "draining" if self.draining else "running")
                        next_beat = now + self.heartbeat_interval
                    self._retry_commits()
                    if busy or now >= next_pending:
                        next_pending = now + 0.25
                        busy |= queue.promote_pending(self.root) > 0
                    if now >= next_lease:
                        next_lease = now + max(0.5, self.watcher.lease / 4)
                        self.watcher.recover(skip=self.id)
                    if not (self.stopping or self.draining):
                        busy |= self._claim()
                except Exception:
                    # a damaged file or a full disk must not end the worker: report, back off, go on
                    log.exception("worker %s: error in its loop, carrying on", self.id)
                    busy = False
                    time.sleep(0.5)
                if self.running or busy:
                    idle_since = now
                elif self._should_exit(now - idle_since):
                    break
                interval = 0.001 if busy else min(0.05, interval * 1.5)
                if self.running:
                    signal.sigtimedwait({signal.SIGCHLD}, interval)
                else:
                    time.sleep(interval)
        finally:
            for run in list(self.running.values()):
                kill_tree(run.pid)
            self._reap(block=True)
            self.heartbeat.remove()
        log.info("worker %s exits after %d job(s)", self.id, self.jobs_done)
        return 0

    def _retry_commits(self) -> None:
        """Commit again what could not be committed; after a minute, hand the job back instead."""
        for item in list(self.uncommitted):
            run, runtime, failure = item
            self.uncommitted.remove(item)
            try:
                final = queue.commit_attempt(self.root, run.claim, self.id, runtime, failure)
                record_in_cache(self.root, run.claim.spec, final)
                self.jobs_done += 1
            except Exception as exc:
                if time.monotonic() - run.started_mono > 60 + (run.claim.spec.get("timeout") or 0):
                    log.error("giving job %s back after failed commits: %s", run.claim.job_id, exc)
                    try:
                        queue.requeue_lost(self.root, run.claim.job_id, self.id, run.claim.attempt,
                                           "its worker could not record the outcome: {}".format(exc))
                    except Exception:
                        self.uncommitted.append(item)
                else:
                    self.uncommitted.append(item)

    def _on_stop_signal(self, signum, frame) -> None:
        # only flags: a handler that did I/O could interrupt the loop's own writes
        self.stop_signal = signum

    def _on_warning_signal(self, signum, frame) -> None:
        self.warning_signal = signum

    def _handle_stop_conditions(self, now: float) -> bool:
        """Act on signals, stop requests and the deadline; True means exit now."""
        if self.stop_signal and not self.stopping:
            self.stopping = True
            if self.in_slurm and self.stop_signal == signal.SIGTERM:
                log.warning("worker %s: allocation cancelled, handing back %d job(s)", self.id, len(self.running))
                self._hand_back_all("its Slurm allocation was cancelled", count_attempt=True)
                return True
            log.info("worker %s: signal %d, finishing running jobs and exiting", self.id, self.stop_signal)
        if self.warning_signal and not self.draining:
            self.draining = True
            log.info("worker %s: end-of-allocation warning, claiming no more jobs", self.id)
        if not self.stopping and os.path.exists(self.root.layout.worker_stop_request(self.id)):
            self.stopping = True
            log.info("worker %s: stop requested, finishing running jobs and exiting", self.id)
        if self.deadline is not None and now >= self.deadline:
            if self.running:
                log.warning("worker %s: time limit near, handing back %d job(s)", self.id, len(self.running))
            self._hand_back_all("its worker reached the end of its time limit", count_attempt=False)
            return True
        return False

    def _hand_back_all(self, why: str, count_attempt: bool) -> None:
        """Kill the running jobs and put them back in the queue for another worker."""
        for run in list(self.running.values()):
            if run.pid > 0:
                kill_tree(run.pid)
        for key, run in list(self.running.items()):
            if run.pid > 0:
                try:
                    os.waitpid(run.pid, 0)
                except ChildProcessError:
                    pass
            try:
                queue.requeue_lost(self.root, run.claim.job_id, self.id, run.claim.attempt, why,
                                   count_attempt=count_attempt)
            except Exception:
                log.exception("could not hand back job %s", run.claim.job_id)
            del self.running[key]

    def _should_exit(self, idle_for: float) -> bool:
        if self.stopping:
            return True
        if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
            return True
        if self.idle_timeout is not None and idle_for >= self.idle_timeout:
            return True
        if self.parent_pid is not None and os.getppid() != self.parent_pid and idle_for >= 1.0:
            return not self._work_left()  # the submitter is gone: drain, then go
        return False

    def _work_left(self) -> bool:
        if any(queue.queue_tickets(self.root, q) for q in self.queues):
            return True
        try:
            pending = os.listdir(self.root.layout.pending)
        except FileNotFoundError:
            return False
        for job_id in pending:
            if not is_job_id(job_id):
                continue  # a temp file or a stray file: not a ticket
            try:
                ticket = read_json(os.path.join(self.root.layout.pending, job_id), {}, missing_ok=True)
            except CorruptFileError:
                ticket = {}
            if isinstance(ticket, dict) and ticket.get("queue") in self.queues:
                return True
        return False

    # -- claiming and starting --------------------------------------------------------

    def _claim(self) -> bool:
        claimed = False
        for q in self.queues:
            for ticket in queue.queue_tickets(self.root, q):
                if len(self.running) >= self.slots:
                    return claimed
                if self.max_jobs is not None and self.jobs_done + len(self.running) >= self.max_jobs:
                    return claimed
                claim = queue.try_claim(self.root, q, ticket, self.id, fits=self._fits)
                if claim is not None:
                    job_dir = self.root.layout.job_dir(claim.job_id)
                    reason = self.root.unsafe_reason([job_dir, os.path.join(job_dir, "spec.json")],
                                                     allow_group_write=True)
                    if reason:
                        self._refuse(claim, "refusing to run job {}: {}".format(claim.job_id, reason))
                    else:
                        try:
                            self._start(claim)
                        except Exception as exc:  # fork or mkdir failed: give the job back
                            log.exception("could not start job %s", claim.job_id)
                            queue.requeue_lost(self.root, claim.job_id, self.id, claim.attempt,
                                               "its worker could not start it: {}".format(exc), count_attempt=False)
                    claimed = True
        return claimed

    def _refuse(self, claim: queue.Claim, message: str) -> None:
        """Fail a claimed job without running it (committed by the next reap)."""
        log.warning("%s", message)
        run = _Running(claim, -1)
        run.failure = {"type": "PermissionError", "module": "builtins", "stage": "claiming",
                       "message": message, "traceback": ""}
        self.running[-id(run)] = run

    def _fits(self, spec: Dict[str, Any]) -> bool:
        """Whether a job's needs fit in what is free now (and in the time left)."""
        need = spec.get("resources") or {}
        for key, capacity in (("cpus", self.cpus), ("memory_gb", self.memory_gb)):
            if capacity is not None and need.get(key):
                used = sum((r.claim.spec.get("resources") or {}).get(key) or 0 for r in self.running.values())
                if used + need[key] > capacity + 1e-9:
                    return False
        timeout = spec.get("timeout")
        if self.deadline is not None and timeout and time.monotonic() + timeout > self.deadline:
            return False
        return True

    def _start(self, claim: queue.Claim) -> None:
        adir = self.root.layout.attempt_dir(claim.job_id, claim.attempt)
        self.root.makedirs(adir)
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the job process
            code = 3
            try:
                os.setsid()
                _die_with_parent(parent)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGUSR1, signal.SIG_DFL)
                redirect_console(adir, truncate=True)
                os.environ["HITHER_FS_JOB_ID"] = claim.job_id
                if claim.spec.get("container"):
                    ok = run_container_attempt(self.root.path, claim.job_id, claim.attempt, claim.spec)
                else:
                    ok = run_attempt(self.root.path, claim.job_id, claim.attempt)
                code = 0 if ok else 1
            finally:
                os._exit(code)
        self.running[pid] = _Running(claim, pid)
        log.debug("job %s attempt %d started as pid %d", claim.job_id, claim.attempt, pid)

    # -- watching running jobs ----------------------------------------------------------

    def _police(self) -> None:
        """Kill jobs that were cancelled or ran past their timeout."""
        for run in list(self.running.values()):
            if run.pid < 0 or run.failure is not None:
                continue
            job_id = run.claim.job_id
            timeout = run.claim.spec.get("timeout")
            if timeout and time.monotonic() - run.started_mono > timeout:
                run.failure = {"type": "JobTimeoutError", "module": "hither_fs", "stage": "running",
                               "message": "job {} ran longer than its job_timeout of {} s and was killed".format(
                                   job_id, timeout), "traceback": ""}
                kill_tree(run.pid)
                continue
            try:
                state = self.root.read_state(job_id)
            except Exception:
                continue
            if state.get("cancel_requested"):
                run.failure = queue.cancelled_record(job_id, "while running")
                kill_tree(run.pid)
            elif state.get("worker") != self.id or state.get("attempt") != run.claim.attempt:
                # another worker judged this one lost and took the job: stop the now useless run
                log.warning("job %s was taken back from worker %s; stopping its run", job_id, self.id)
                run.failure = {"type": "WorkerLostError", "module": "hither_fs", "stage": "running",
                               "message": "the claim was taken back", "traceback": ""}
                kill_tree(run.pid)

    def _reap(self, block: bool = False) -> bool:
        done = False
        for key, run in list(self.running.items()):
            if run.pid < 0:  # never started
                self._finish(run, {}, None)
                del self.running[key]
                done = True
                continue
            try:
                pid, status, usage = os.wait4(run.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                pid, status, usage = run.pid, 0, None
            if pid == 0:
                continue
            del self.running[key]
            self._finish(run, _usage_info(run, status, usage), status)
            done = True
        return done

    def _finish(self, run: _Running, runtime: Dict[str, Any], status: Optional[int]) -> None:
        failure = run.failure
        if failure is None and status is not None and os.WIFSIGNALED(status) and self.stop_signal:
            # killed along with this worker (scancel signals the whole allocation): not the job's fault
            queue.requeue_lost(self.root, run.claim.job_id, self.id, run.claim.attempt,
                               "killed by signal {} while its worker was being stopped".format(
                                   os.WTERMSIG(status)), count_attempt=True)
            return
        if failure is None and status is not None and os.WIFSIGNALED(status):
            failure = {"type": "JobProcessError", "module": "hither_fs", "stage": "running",
                       "message": "the job process was killed by signal {}".format(os.WTERMSIG(status)),
                       "traceback": ""}
        runtime.update(base_runtime(self.id))
        try:
            final = queue.commit_attempt(self.root, run.claim, self.id, runtime, failure)
        except Exception:
            # (a full disk, say) the job stays ours and running: try again soon, never leave it stuck
            log.exception("could not commit job %s; will retry", run.claim.job_id)
            self.uncommitted.append((run, runtime, failure))
            return
        try:
            record_in_cache(self.root, run.claim.spec, final)
        except Exception:
            log.exception("could not record job %s in its cache", run.claim.job_id)
        self.jobs_done += 1
        log.info("job %s (%s) -> %s", run.claim.job_id, run.claim.spec["function"]["name"], final)


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this job process if its worker dies (Linux).

    A worker killed outright cannot kill its jobs; without this they would
    run on as orphans while the job is re-run elsewhere.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(1)


def _usage_info(run: _Running, status: int, usage) -> Dict[str, Any]:
    end = time.time()
    info: Dict[str, Any] = {
        "pid": run.pid,
        "start": _iso(run.started),
        "end": _iso(end),
        "wall_seconds": round(end - run.started, 6),
        "attempt": run.claim.attempt,
    }
    if usage is not None:
        info["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 6)
        info["peak_memory_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    if os.WIFEXITED(status):
        info["exit_code"] = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        info["killed_by_signal"] = os.WTERMSIG(status)
    return info


def _iso(t: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_in_process(root: Root, claim: queue.Claim, worker_id: str, function) -> Optional[str]:
    """Run a claimed job inside this process (``DefaultJobHandler``).

    Console output is copied to the attempt's files while still reaching the
    terminal; a heartbeat is kept so other workers do not think the job lost.
    """
    import contextlib
    import resource
    import threading

    adir = root.layout.attempt_dir(claim.job_id, claim.attempt)
    root.makedirs(adir)
    heartbeat = Heartbeat(root, worker_id, {"queues": [claim.spec["queue"]], "slots": 1, "in_process": True})
    heartbeat.beat(jobs=[claim.job_id])
    stop = threading.Event()

    def beat():
        while not stop.wait(2.0):
            heartbeat.beat(jobs=[claim.job_id])

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    start, cpu0 = time.time(), time.process_time()
    try:
        with _console_file(adir, "stdout.txt") as out, _console_file(adir, "stderr.txt") as err:
            with contextlib.redirect_stdout(_Tee(sys.stdout, out)), contextlib.redirect_stderr(_Tee(sys.stderr, err)):
                if claim.spec.get("container"):
                    run_container_attempt(root.path, claim.job_id, claim.attempt, claim.spec)
                else:
                    run_attempt(root.path, claim.job_id, claim.attempt, function=function)
        end = time.time()
        runtime = {"pid": os.getpid(), "start": _iso(start), "end": _iso(end), "wall_seconds": round(end - start, 6),
                   "cpu_seconds": round(time.process_time() - cpu0, 6), "attempt": claim.attempt,
                   "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   "in_process": True}
        runtime.update(base_runtime(worker_id))
        final = queue.commit_attempt(root, claim, worker_id, runtime)
        record_in_cache(root, claim.spec, final)
    finally:
        stop.set()
        beater.join()
        heartbeat.remove()
    error = root.read_job_file(claim.job_id, "error.json", {}) if final != "finished" else {}
    if error.get("type") == "KeyboardInterrupt":
        raise KeyboardInterrupt  # Ctrl-C during an in-process job stops the script, as it would without hither_fs
    return final


def _console_file(directory: str, name: str):
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode(directory))
    return os.fdopen(fd, "w")


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()
