"""Job handlers: who runs the jobs of a ``Config`` block.

A handler names the queue its jobs go to and makes sure someone serves it:

* :class:`DefaultJobHandler` runs jobs one at a time inside the submitting
  process, as soon as they are ready (or while you wait for them).
* :class:`ParallelJobHandler` starts ``num_workers`` worker daemons on this
  machine (``hither-fs worker``), which outlive the submitting process until
  its jobs are done.
"""

import atexit
import datetime
import itertools
import logging
import os
import threading
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import environment, protocol, runners, watch
from .attempts import run_in_process
from .cache import record_outcome
from .job import POLL_MAX, POLL_MIN
from .lease import Heartbeat
from .queue import QueueReader, count_tickets, in_process_queue, remove_empty_queue, ticket_token
from .root import Root
from .runtime.files import file_mode, makedirs
from .runtime.layout import check_queue_name
from .worker import new_worker_id

log = logging.getLogger("hither_fs.handlers")
_counter = itertools.count(1)
#: A local worker up this long started fine: the handler stops counting its earlier deaths.
WORKER_UP_SECONDS = 10.0
#: Local workers are woken at most this often (seconds) as jobs are queued.
WAKE_EVERY = 0.002


class JobHandler:
    """Base of the handlers. Subclasses set the queue and start its servers."""

    #: Jobs run inside the submitting process (the function need not be importable).
    in_process = False

    def queue_for(self, root: Root) -> str:
        raise NotImplementedError

    def check(self, spec: Dict[str, Any]) -> None:
        """Raise if this handler could never run a job of this spec (called before it is written)."""

    def shape(self) -> Optional[Dict[str, Any]]:
        """What the allocations running this handler's jobs look like (recorded in each spec)."""
        return None

    def resources_for(self, requested: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
        """What a job needs, recorded in its spec (``Config(job_resources=...)``)."""
        return dict(requested) if requested else None

    def submitted(self, root: Root, job) -> None:
        """Called after a job of this handler was written to the root."""

    def help(self, root: Root) -> None:
        """Called now and then while this process waits for one of the handler's jobs."""

    def _refuse_unsafe_root(self, root: Root) -> None:
        """PermissionError if workers would refuse ``root`` (checked once per root): said at
        ``.run()``, not by a job that waits for ever."""
        checked = self.__dict__.setdefault("_safe_roots", set())
        if root.path not in checked:
            reason = root.unsafe_reason()
            if reason:
                raise PermissionError("workers refuse to run jobs from {}: {}".format(root.path, reason))
            checked.add(root.path)

    # -- ``with handler as jh:`` (hither's spelling) ------------------------------------------

    def __enter__(self) -> "JobHandler":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """The end of ``with handler as jh:``. hither cleaned a handler up there: its workers
        halted, and jobs not yet done never finished. Here no job is lost: the block waits
        for the jobs this process gave the handler (their errors are not raised here:
        ``job.get_result()`` does), then :meth:`release` lets go of what ran them.

        When the block ends with an exception, nothing is waited for or stopped: the jobs go
        on (local workers finish them and leave once this process is gone)."""
        if exc_type is not None:
            return
        jobs = _jobs_of(self)
        for k, job in enumerate(jobs[-1:] + jobs[:-1]):  # the newest first, then one look at most others: as hi.wait()
            try:
                job.wait_done(poll=POLL_MAX if k < len(jobs) - 1 else POLL_MIN, lag=0.05 if k < len(jobs) - 1 else 0.0)
            except (protocol.JobDirectoryError, FileNotFoundError):
                continue  # damaged or removed: it will never change (job.get_result() says why)
        self.release()

    def release(self) -> None:
        """Let go of what runs this handler's jobs, once they are done (the end of its ``with``
        block). The handler can still be used afterwards: it starts what it needs again."""


def _jobs_of(handler: JobHandler) -> list:
    """The jobs this process gave ``handler`` (since the last ``hi.reset()``), oldest first."""
    from . import submit  # submit imports this module
    with submit._jobs_lock:
        return [job for job in submit._jobs if job._handler is handler]


class DefaultJobHandler(JobHandler):
    """Run jobs serially in this process, through the root like any other job."""

    in_process = True

    def __init__(self):
        self._n = next(_counter)
        self._functions: Dict[str, Callable] = {}
        self._readers: Dict[str, QueueReader] = {}
        self._worker_id = new_worker_id("inproc")
        self._heartbeats: Dict[str, Heartbeat] = {}
        self._lock = threading.RLock()

    def queue_for(self, root: Root) -> str:
        # per process: a forked child gets its own queue
        return in_process_queue(self._n)

    def remember(self, job_id: str, function: Callable) -> None:
        """The function a job submitted from this process runs (no import needed here)."""
        self._functions[job_id] = function

    def submitted(self, root: Root, job) -> None:
        watch.IN_PROCESS.add(self)
        self.help(root)

    def help(self, root: Root) -> None:
        # one thread at a time runs this handler's jobs (the watcher of futures may ask too, and
        # a job's console is captured process-wide); re-entered when a job running here waits
        # for a job it submitted: that one runs then
        with self._lock:
            self._help(root)

    def help_unless_busy(self, root: Root) -> None:
        """:meth:`help`, unless another thread runs this handler's jobs now (it runs the queued
        ones next), or none it was given waits to run (its queue is not even listed): for a
        wait on another handler's job, which must never block on this one."""
        if self._functions and root.path in self._readers and self._lock.acquire(blocking=False):
            try:
                self._help(root)
            finally:
                self._lock.release()

    def _help(self, root: Root) -> None:
        q = self.queue_for(root)
        reader = self._readers.get(root.path)
        if reader is None:
            reader = self._readers[root.path] = QueueReader(root.layout, q, max_age=0.0)
            atexit.register(remove_empty_queue, root.layout, q)
        while True:
            for path in reader.candidates():
                reader.drop(path)
                token = protocol.Token.parse(ticket_token(os.path.basename(path)))
                if token is None:
                    continue
                try:
                    spec = protocol.read_spec(root, token.job_id)
                except FileNotFoundError:
                    continue
                claim = protocol.claim(root, path, self._worker_id, spec)
                if claim is not None:
                    log.debug("running job %s (%s) in this process", claim.job_id,
                              (spec.get("function") or {}).get("name"))
                    self._run(root, claim)
                    break
            else:
                return

    def _run(self, root: Root, claim: protocol.Claim) -> None:
        heartbeat = self._heartbeats.get(root.path)
        if heartbeat is None:
            heartbeat = self._heartbeats[root.path] = Heartbeat(
                root, self._worker_id, {"queues": [self.queue_for(root)], "slots": 1, "in_process": True})
            atexit.register(heartbeat.remove)
        heartbeat.beat(jobs=[claim.job_id])
        function = self._functions.pop(claim.job_id, None)
        outcome = run_in_process(root, claim, self._worker_id, function,
                                 beat=lambda: heartbeat.beat(jobs=[claim.job_id]))
        final = protocol.commit(root, claim, outcome)
        heartbeat.beat(jobs=[])
        if final is not None:
            record_outcome(root, claim.spec, final, outcome.result, outcome.error)
        if (outcome.error or {}).get("type") == "KeyboardInterrupt":
            raise KeyboardInterrupt  # Ctrl-C during an in-process job stops the script, as without hither_fs

    def __repr__(self):
        return "DefaultJobHandler()"


class ParallelJobHandler(JobHandler):
    """Run jobs on ``num_workers`` local worker processes.

    The workers belong to this process's Python environment (see
    :mod:`hither_fs.environment`): they serve the queue
    ``local-<fingerprint>`` of the root, shared by every
    ``ParallelJobHandler`` of that environment, and are started with exactly
    that environment. They start with the first job and exit once this process
    is gone and nothing is left for them, so jobs of a script that was killed
    still finish. With ``queue_name`` the jobs go to exactly that queue, where
    any worker serving it (``hither-fs worker --queue``) may run them: matching
    their environment is then up to you.
    """

    def __init__(self, num_workers: int = 4, *, queue_name: Optional[str] = None):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError("num_workers must be a positive integer, not {!r}".format(num_workers))
        self.num_workers = num_workers
        self.queue_name = None if queue_name is None else check_queue_name(queue_name)
        self._workers: Dict[Tuple[str, str], List[subprocess.Popen]] = {}  # (root, queue) -> processes
        self._environments: Dict[str, environment.Snapshot] = {}  # queue -> the environment its workers get
        self._failures: Dict[str, int] = {}  # queue -> workers that died since one last stayed up
        self._latest: Optional[str] = None  # the queue of the environment used last
        if self.queue_name:  # known now: the handler keeps workers for it even before it is given a job
            self.queue_for(None)
        self._woken = -1.0  # when its workers were last woken for a new job

    def queue_for(self, root: Optional[Root]) -> str:
        snapshot = environment.current()
        queue = self.queue_name or snapshot.queue("local")
        self._environments.setdefault(queue, snapshot)
        self._latest = queue
        return queue

    def submitted(self, root: Root, job) -> None:
        self._refuse_unsafe_root(root)
        self._ensure_workers(root)
        now = time.monotonic()
        if now - self._woken >= WAKE_EVERY:  # a burst of jobs wakes them once: they list the whole queue
            self._woken = now
            for p in self._workers.get((root.path, self._latest), ()):
                runners.wake(p.pid)

    def help(self, root: Root) -> None:
        self._ensure_workers(root)

    def _ensure_workers(self, root: Root) -> None:
        """Keep ``num_workers`` workers alive for the environment used last, and for each
        earlier one while its queue holds jobs. When a queue's workers keep dying and none
        is left, nothing can run its jobs: they fail (see :meth:`_give_up`)."""
        for queue, snapshot in list(self._environments.items()):
            procs, died = [], None
            for p in self._workers.get((root.path, queue), []):
                if p.poll() is None:
                    procs.append(p)
                elif p.returncode != 0:
                    died = p
                    self._failures[queue] = self._failures.get(queue, 0) + 1
                    log.warning("local worker pid %d for queue %s exited with code %s; see %s", p.pid, queue,
                                p.returncode, p.log_path)
            if any(time.monotonic() - p.started_at > WORKER_UP_SECONDS for p in procs):
                self._failures[queue] = 0  # a worker there stays up: deaths were the jobs' doing, not its start's
            if died is not None:
                if not procs and self._failures[queue] > 3 * self.num_workers:
                    self._workers.pop((root.path, queue), None)
                    self._give_up(root, queue, "local workers keep failing (exit code {}); see {}".format(
                        died.returncode, died.log_path))
            if queue != self._latest and not procs and not count_tickets(root.layout, queue, cap=1):
                self._workers.pop((root.path, queue), None)
                continue  # an earlier environment with nothing left to run: no workers for it
            while len(procs) < self.num_workers:
                procs.append(start_worker_process(root, [queue], parent_pid=os.getpid(), env_snapshot=snapshot))
            self._workers[root.path, queue] = procs

    def _give_up(self, root: Root, queue: str, message: str) -> None:
        """Nothing can run the queue's jobs: fail them with ``message``, and raise it."""
        self._environments.pop(queue, None)
        log.error("giving up on queue %s: %s", queue, message)
        protocol.fail_queue(root, queue, protocol.error_record(
            "RuntimeError", message, "starting local workers for it", module="builtins"))
        raise RuntimeError(message)

    def halt(self, timeout: float = 60.0) -> None:
        """Ask this handler's workers to finish their current jobs and exit.

        A worker still there after ``timeout`` seconds is killed; its jobs go
        back to the queue through the lease check of any other worker.
        """
        procs = [p for ps in self._workers.values() for p in ps if p.poll() is None]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._workers.clear()

    def release(self, timeout: float = 5.0) -> None:
        """Stop this handler's workers (hither halted them at the end of its ``with`` block).

        A worker is asked to stop (SIGTERM: it finishes the job it runs, then exits) only
        when its queue holds no job for it - jobs queued by another handler in the same
        environment, or forwarded by a compute resource, keep it. Unlike :meth:`halt` it
        never kills: it waits ``timeout`` seconds for them to exit, then leaves the rest to
        finish on their own.
        """
        stopped = []
        for (root_path, queue), procs in list(self._workers.items()):
            if count_tickets(Root.get(root_path).layout, queue, cap=1):
                continue  # work left in its queue: these workers go on, and leave once this process is gone
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    stopped.append(p)
            del self._workers[root_path, queue]
        deadline = time.monotonic() + timeout
        for p in stopped:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # still finishing a job: it exits when done

    def __repr__(self):
        queue = ", queue_name={!r}".format(self.queue_name) if self.queue_name else ""
        return "ParallelJobHandler(num_workers={}{})".format(self.num_workers, queue)


def worker_log_path(root: Root, name: str) -> str:
    day = datetime.date.today().isoformat()
    directory = os.path.join(root.path, "logs", day)
    makedirs(directory)
    return os.path.join(directory, name + ".log")


def start_worker_process(root: Root, queues: List[str], *, slots: int = 1, parent_pid: Optional[int] = None,
                         extra_args: Optional[List[str]] = None,
                         env_snapshot: Optional[environment.Snapshot] = None) -> subprocess.Popen:
    """Start ``hither-fs worker`` as a detached local process, in ``env_snapshot``
    (by default this process's environment now)."""
    cmd = [sys.executable, "-m", "hither_fs", "worker", "--root", root.path, "--slots", str(slots)]
    for q in queues:
        cmd += ["--queue", q]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    cmd += extra_args or []
    env = (env_snapshot or environment.current()).for_worker(environment.PACKAGE_PARENT)
    log_path = worker_log_path(root, "local-{}-{}-{}".format(socket.gethostname().split(".")[0],
                                                             os.getpid(), next(_counter)))
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, file_mode(os.path.dirname(log_path)))
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)
    finally:
        os.close(log_fd)
    proc.log_path = log_path
    proc.started_at = time.monotonic()
    log.info("started local worker pid %d for queue%s %s (%d slot%s; log: %s)", proc.pid,
             "" if len(queues) == 1 else "s", ", ".join(queues), slots, "" if slots == 1 else "s", log_path)
    return proc
