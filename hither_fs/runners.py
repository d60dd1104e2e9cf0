"""The processes a worker runs jobs in.

A job without a container runs in a *warm runner*: a process the worker forks
once per slot, which then runs that slot's jobs one after another
(:mod:`hither_fs.runtime.runner`), so a function's module is imported once
per runner instead of once per job, and no job pays for a fork. A job in a
container still gets a forked process of its own (:meth:`Attempt.start
<hither_fs.attempts.Attempt.start>`): starting the container costs far more.

Either kind of process runs in its own session, so a timeout or a cancel kills
its whole process tree (:func:`kill_tree`), and dies with its worker
(``PR_SET_PDEATHSIG``). A runner answers each job on a pipe and then sends its
worker :data:`WAKE_SIGNAL`, which the worker's loop waits for along with
``SIGCHLD``; the same signal from a submitting process on the same host
wakes a worker at once when it queues a job.
"""

import json
import os
import select
import shutil
import signal
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import psutil

from .runtime import runner as in_runner
from .runtime.files import CorruptFileError, read_json

#: Wakes a worker out of its sleep. Its default action is to do nothing, so a signal
#: that comes before the worker is ready to take it (or to a process that is no
#: worker) is harmless.
WAKE_SIGNAL = signal.SIGURG

#: Bytes asked of a pipe per read: what a Linux pipe holds. (A read allocates what it asks
#: for first: a megabyte would cost an mmap, page faults and an munmap per answer.)
PIPE_READ = 1 << 16


def wake(pid: int) -> None:
    """Wake the worker ``pid`` (a local worker of this user) at once."""
    try:
        os.kill(pid, WAKE_SIGNAL)
    except OSError:
        pass


def local_workers(parent_pid: int, root_path: str) -> List[int]:
    """The pids of the workers that the process ``parent_pid`` started for the root at
    ``root_path`` on this host (``ParallelJobHandler``'s: its children running
    ``hither_fs worker --root root_path``)."""
    try:
        children = psutil.Process(parent_pid).children()
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        if "worker" in command and root_path in command and "hither_fs" in command:
            found.append(child.pid)
    return found


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


def become_job_process(parent: int, close_fds: List[int] = ()) -> None:
    """In a process just forked from the worker ``parent``: a session of its own, death
    with the worker, the signal dispositions of a fresh process, and none of the
    worker's pipes to its other runners (a runner must see its pipe close)."""
    os.setsid()
    _die_with_parent(parent)
    _close(close_fds)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD, WAKE_SIGNAL):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, WAKE_SIGNAL})


def _close(fds: List[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes  # only here: the worker itself never needs it
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _become_subreaper() -> None:
    """Make a runner the parent of whatever its jobs leave behind (Linux 3.4+), so that
    it sees such processes as its children and retires (see :mod:`.runtime.runner`)."""
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process if its worker dies (Linux).

    A worker killed outright cannot kill its jobs; without this they would
    run on as orphans while the job is re-run elsewhere.
    """
    if not _prctl(1, signal.SIGKILL):  # PR_SET_PDEATHSIG
        return
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(1)


def _status_of(answer: Dict[str, Any]) -> int:
    """The wait status a forked job process would have had: 0 with a result, else exit code 1."""
    return 0 if "result" in answer.get("outcome", {}) else 1 << 8


class Runner:
    """One warm runner process and the two pipes to it.

    ``key`` says which jobs it may run (the users whose code its import guard
    trusts); ``prepare(spec)`` runs in the new process before its first job.
    """

    def __init__(self, root_path: str, key: Any, prepare: Callable[[Dict[str, Any]], None],
                 spec: Dict[str, Any], close_fds: List[int], scratch: str):
        os.makedirs(scratch, mode=0o700, exist_ok=True)
        self.scratch = scratch  # its jobs' console files, one job at a time
        jobs_r, jobs_w = os.pipe()
        answers_r, answers_w = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:  # (EAGAIN, ENOMEM: the job is handed back; the pipes must not stay open)
            _close([jobs_r, jobs_w, answers_r, answers_w])
            raise
        if pid == 0:  # the runner
            code = 0
            try:
                os.close(jobs_w)
                os.close(answers_r)
                become_job_process(parent, close_fds)
                _become_subreaper()
                prepare(spec)
                in_runner.serve(root_path, jobs_r, answers_w, notify=lambda: wake(parent))
            except BaseException:
                code = 1
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(jobs_r)
        os.close(answers_w)
        os.set_blocking(answers_r, False)
        self.pid = pid
        self.key = key
        self.jobs_fd, self.answers_fd = jobs_w, answers_r
        self.jobs_run = 0
        self.job_id: Optional[str] = None  # the job it runs now
        self.doomed = False  # killed (a timeout, a cancel): never given another job
        #: the user's own module files its jobs imported, as they were then (see in_runner.code_files)
        self.code_files: Dict[str, List[int]] = {}
        self.status: Optional[int] = None  # its wait status once it is gone
        self._buffer = bytearray()
        self._scanned = 0  # how much of the buffer holds no newline

    @property
    def fds(self) -> List[int]:
        return [self.jobs_fd, self.answers_fd]

    def send(self, job_id: str, spec: Dict[str, Any]) -> None:
        data = (json.dumps({"job_id": job_id, "console": self.scratch, "spec": spec}) + "\n").encode()
        self.job_id = job_id
        while data:
            data = data[os.write(self.jobs_fd, data):]
        self.jobs_run += 1

    def answer(self, block: bool = False) -> Optional[Tuple[int, Dict[str, Any]]]:
        """``(wait status, answer)`` once the job it runs has ended, else None. The status
        is 0 (or exit code 1) with the runner's answer - on the pipe, or left in its
        directory when the job closed the pipe (see :func:`.runtime.runner.serve`) - or the
        runner's own wait status when it died with the job (then the answer is empty)."""
        while True:
            line = self._line()
            if line is not None:
                answer = json.loads(line)
                if answer.get("job_id") != self.job_id or self._buffer:  # never another job's answer
                    self.doomed = True
                    return 1 << 8, {}
                return _status_of(answer), answer
            if self.status is None and self._ended():
                continue  # an answer may have come just before it ended
            if self.status is not None:
                left = self._left_answer()
                return (_status_of(left), left) if left else (self.status, {})
            if not block:
                return None
            select.select([self.answers_fd], [], [], 0.05)

    def _left_answer(self) -> Dict[str, Any]:
        try:
            answer = read_json(os.path.join(self.scratch, in_runner.OUTCOME), None, missing_ok=True)
        except CorruptFileError:
            return {}
        return answer if isinstance(answer, dict) and answer.get("job_id") == self.job_id else {}

    def _line(self) -> Optional[bytes]:
        """The next whole line of answer, else None (what came so far is kept)."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            try:
                chunk = os.read(self.answers_fd, PIPE_READ)
            except BlockingIOError:
                return None
            if not chunk:
                return None
            self._buffer += chunk

    def code_changed(self) -> bool:
        """Whether a module file its jobs imported was changed since (one stat each)."""
        for path, (mtime_ns, size) in self.code_files.items():
            try:
                st = os.stat(path)
            except OSError:
                return True
            if (st.st_mtime_ns, st.st_size) != (mtime_ns, size):
                return True
        return False

    @property
    def alive(self) -> bool:
        """Whether it can take another job: not killed, and still there."""
        if self.status is None and not self.doomed:
            self._ended()
        return self.status is None and not self.doomed

    def _ended(self) -> bool:
        """Whether the process has ended (its wait status is kept in ``status``)."""
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = status
        return bool(pid)

    def close(self, kill_job: bool = False) -> None:
        """End it: an idle runner (or one that retired itself) is killed alone; with
        ``kill_job`` (it runs a job) its whole process tree is."""
        _close(self.fds)
        if self.status is None:
            if kill_job:
                kill_tree(self.pid)
            else:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                _, self.status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                self.status = 0
        shutil.rmtree(self.scratch, ignore_errors=True)


class RunnerPool:
    """A worker's warm runners: at most ``size`` at once, one per running job plus idle
    ones kept for the next jobs. ``prepare(spec)`` readies a new runner for jobs like
    ``spec`` (the worker's import guard); ``key(spec)`` says which runners may run it."""

    def __init__(self, root_path: str, size: int, scratch: str, key: Callable[[Dict[str, Any]], Any],
                 prepare: Callable[[Dict[str, Any]], None]):
        self.root_path = root_path
        self.scratch = scratch
        self.started = 0
        self.size = size
        self.key = key
        self.prepare = prepare
        self.idle: List[Runner] = []
        self.busy: List[Runner] = []

    def fds(self) -> List[int]:
        return [fd for r in self.idle + self.busy for fd in r.fds]

    def acquire(self, spec: Dict[str, Any]) -> Runner:
        """An idle runner for this job, or a new one (retiring an idle runner of other
        jobs if the pool is full)."""
        key = self.key(spec)
        for gone in [r for r in self.idle if not r.alive]:  # killed while idle (the OOM killer, say)
            self.idle.remove(gone)
            gone.close()
        runner = next((r for r in self.idle if r.key == key), None)
        if runner is not None and runner.code_changed():  # it would run the code as it was
            self.idle.remove(runner)
            runner.close()
            runner = None
        if runner is not None:
            self.idle.remove(runner)
        else:
            while self.idle and len(self.idle) + len(self.busy) >= self.size:
                self.idle.pop(0).close()
            self.started += 1
            runner = Runner(self.root_path, key, self.prepare, spec, self.fds(),
                            os.path.join(self.scratch, "runner-{}".format(self.started)))
        self.busy.append(runner)
        return runner

    def release(self, runner: Runner, answer: Dict[str, Any]) -> None:
        """After its job: keep it for the next one, unless it is gone or said it is unfit."""
        if runner in self.busy:
            self.busy.remove(runner)
        runner.code_files.update(answer.get("code_files") or {})
        if runner.alive and not answer.get("retire"):
            self.idle.append(runner)
        else:
            runner.close()

    def close(self) -> None:
        for runner in self.idle + self.busy:
            runner.close(kill_job=True)
        self.idle, self.busy = [], []
