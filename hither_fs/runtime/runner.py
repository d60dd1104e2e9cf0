"""A warm runner: a process that runs one worker slot's jobs one after another.

A worker forks a runner per slot (see :mod:`hither_fs.runners`) instead of a
process per job, so a function's module is imported once per runner, not once
per job. The runner reads one job per line on a pipe, runs it with
:func:`~hither_fs.runtime.execute.attempt_outcome`, and answers one line: the
outcome, the job's CPU time and peak memory, and whether the runner is still
fit for another job.

What a job gets of its own: its console (file descriptors 1 and 2 point at
its scratch files while it runs), its CPU time (``getrusage`` before and
after, its child processes included) and its peak memory (the kernel's
high-water mark, reset before it starts; its child processes' when they
used more). What a job changes is put back after it: the environment, the
working directory, the umask, ``sys.path``, ``sys.stdout``/``sys.stderr``,
and what the kernel keeps per process (:class:`_ProcessState`: signal
handlers and mask, timers, resource limits, priority, CPU affinity). What
cannot be put back ends the runner once the job's answer is sent, so the
next job gets a fresh one: threads or processes the job left running,
memory it left in use (``RETIRE_ABOVE_BYTES`` above what the runner had
after its first job), file descriptors it left open (``RETIRE_ABOVE_FDS``
more), a closed ``sys.stdout``, a lowered hard limit or priority. A job that
closed or replaced the runner's own pipes cannot be answered: the runner
leaves the outcome in its directory for the worker and exits. A process the
job forks that comes back into the runner's loop leaves at once. A job that
kills its process (a crash, ``os._exit``) or is killed (a timeout, a
cancel) ends the runner with it; the worker sees the runner gone and fails
that job as it would a forked one.

Standard library only (and what :mod:`.execute` imports): the runner is forked
from the worker, but nothing here needs more.
"""

import functools
import json
import os
import resource
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .execute import OUTCOME, attempt_outcome, redirect_console
from .files import write_json

#: A runner whose resident memory grew this much above what it had after its first job
#: (objects a job left behind, a heap that does not shrink) retires after the job.
RETIRE_ABOVE_BYTES = 512 << 20
#: A runner with this many more open file descriptors than after its first job retires
#: after the job (a job that leaks them would leave the next ones none).
RETIRE_ABOVE_FDS = 256


def _memory_kib() -> Dict[str, int]:
    """This process's ``VmRSS`` and ``VmHWM`` (its peak) in KiB, from ``/proc/self/status``
    (empty where there is no /proc)."""
    found = {}
    try:
        with open("/proc/self/status", "rb") as f:
            text = f.read()
        for field in (b"VmRSS:", b"VmHWM:"):
            at = text.find(field)
            if at >= 0:
                found[field[:5].decode()] = int(text[at + 6:text.index(b"\n", at)].split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found


def _reset_peak_memory() -> bool:
    """Reset the kernel's high-water mark of this process's memory (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _usage() -> Tuple[float, int]:
    """CPU seconds of this process and its waited-for children, and the largest peak
    memory (KiB) of those children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, children.ru_maxrss


def _open_fds() -> Optional[int]:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _identity(fd: int) -> Optional[Tuple[int, int]]:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _children_left() -> bool:
    """Reap the job's exited processes; True if any is still running. (The runner is a
    child subreaper: what a job started and left behind, even a daemon that forked
    twice, becomes its child when its parent exits.)"""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _console_back(saved_fds: Tuple[int, int]) -> None:
    """Between jobs the runner's console is its worker's again (its log): a job's files
    are its own, and what the runner itself has to say goes where the worker's does.
    (Only when ``saved_fds`` are still the runner's: see :func:`serve`.)"""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.dup2(saved_fds[0], 1)
    os.dup2(saved_fds[1], 2)


try:  # the handlers as the C module has them: signal.getsignal makes each an enum, 15 times slower
    from _signal import getsignal as _handler
except ImportError:
    _handler = signal.getsignal
_SIGNALS = [int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]
_LIMITS = sorted({getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")})
_TIMERS = [getattr(signal, name) for name in ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF") if hasattr(signal, name)]


class _ProcessState:
    """What the kernel keeps per process that a job may change and that a fresh process
    would not inherit from it: signal handlers and mask, interval timers (an alarm),
    resource limits, priority and CPU affinity. Taken once, as the runner starts."""

    def __init__(self):
        self.handlers = [_handler(s) for s in _SIGNALS]
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.limits = {r: resource.getrlimit(r) for r in _LIMITS}
        self.priority = os.getpriority(os.PRIO_PROCESS, 0)
        self.affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def restore(self) -> Optional[str]:
        """Put it back after a job; what could not be put back (the runner retires), or None."""
        unfit: List[str] = []
        for timer in _TIMERS:
            signal.setitimer(timer, 0)  # a timer a job left set would go off in the next one
        # a signal that came while the job blocked it, and that the runner's mask lets through,
        # would meet the runner's handler (a default action: the end of the runner): taken now
        for _ in range(len(_SIGNALS)):
            waiting = signal.sigpending() - set(self.mask)
            if not waiting or signal.sigtimedwait(waiting, 0) is None:
                break
        now = [_handler(s) for s in _SIGNALS]
        if now != self.handlers:
            for sig, handler, changed in zip(_SIGNALS, self.handlers, now):
                if changed != handler:
                    try:
                        signal.signal(sig, handler)
                    except (OSError, TypeError, ValueError):  # (None: a handler Python did not install)
                        unfit.append("signal handlers")
        signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        for limit, value in self.limits.items():
            if resource.getrlimit(limit) != value:
                try:
                    resource.setrlimit(limit, value)
                except (OSError, ValueError):  # a lowered hard limit stays lowered
                    unfit.append("resource limits")
        if os.getpriority(os.PRIO_PROCESS, 0) != self.priority:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, self.priority)
            except OSError:  # only a privileged process may raise its priority again
                unfit.append("priority")
        if self.affinity is not None and os.sched_getaffinity(0) != self.affinity:
            try:
                os.sched_setaffinity(0, self.affinity)
            except OSError:
                unfit.append("CPU affinity")
        return "the job changed its process's {}, which cannot be put back".format(
            " and ".join(dict.fromkeys(unfit))) if unfit else None


class _Saved:
    """What a job may change in its process and the runner puts back after it."""

    def __init__(self):
        self.environ = _environ_copy()
        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.umask = os.umask(0o077)
        os.umask(self.umask)

    def restore(self) -> Optional[str]:
        """Put it back; what could not be (the runner retires), or None."""
        if _environ_copy() != self.environ:
            _restore_environ(self.environ)
        try:
            if os.getcwd() != self.cwd:
                os.chdir(self.cwd)
        except OSError:
            os.chdir(self.cwd)
        sys.path[:] = self.path
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        os.umask(self.umask)
        if any(stream is None or stream.closed for stream in (sys.stdout, sys.stderr)):
            return "the job closed sys.stdout or sys.stderr"
        return None


def _environ_copy() -> Dict[Any, Any]:
    """The environment as cheap to copy and compare as can be: CPython keeps it as bytes
    in ``os.environ._data`` (a dict copy in C, against decoding every variable)."""
    raw = getattr(os.environ, "_data", None)
    return dict(raw) if isinstance(raw, dict) else dict(os.environ)


def _restore_environ(saved: Dict[Any, Any]) -> None:
    now = _environ_copy()
    name = os.fsdecode if saved and isinstance(next(iter(saved)), bytes) else str
    for key in [k for k in now if k not in saved]:
        del os.environ[name(key)]
    for key, value in saved.items():
        if now.get(key) != value:
            os.environ[name(key)] = name(value)


@functools.lru_cache(maxsize=None)
def _library_dirs() -> Tuple[str, ...]:
    """Where the modules that are no job's own code live: Python's, the environment's
    packages, and hither_fs itself."""
    import site
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    try:
        dirs.update(site.getsitepackages() + [site.getusersitepackages()])
    except AttributeError:  # (a virtualenv's old site module)
        pass
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs if d)


#: What a runner reports for a module file that changed while its job ran: it never
#: matches the file, so the runner gets no other job.
CHANGED = [-1, -1]


def code_files(names: Any, since_ns: int = 0) -> Dict[str, List[int]]:
    """``{file: [mtime_ns, size]}`` of the modules named that are the user's own code (not
    Python's, an installed package's or hither_fs's, nor in a directory this user cannot
    write): what a runner reports after a job, so that its worker retires it once one of
    them is edited (a fresh process would import the file as it is then). A file modified
    at ``since_ns`` (the job's start) or later is :data:`CHANGED`: the job may have run
    what it was before."""
    library = _library_dirs()
    found = {}
    for name in names:
        try:  # (not getattr: a lazily loaded module would run its code on any attribute)
            path = object.__getattribute__(sys.modules[name], "__dict__").get("__file__")
            if not isinstance(path, str):
                continue
            path = os.path.realpath(path)
            if path.startswith(library) or not os.access(os.path.dirname(path), os.W_OK):
                continue
            st = os.stat(path)
        except Exception:  # gone from sys.modules, no __dict__, no such file, a NUL in the name...
            continue
        found[path] = CHANGED if st.st_mtime_ns >= since_ns else [st.st_mtime_ns, st.st_size]
    return found


class _Baseline:
    """What the runner has of its own: taken as it starts (its process state, its threads,
    its pipes and console copies), and after its first job (the memory and file
    descriptors the imports a job needs take)."""

    def __init__(self, own_fds: List[int], console_fds: Tuple[int, int]):
        self.process = _ProcessState()
        self.threads = _threads()
        self.own = {fd: _identity(fd) for fd in own_fds + list(console_fds)}
        self.console_fds = console_fds
        self.rss_kib: Optional[int] = None
        self.fds: Optional[int] = None
        self.modules = set(sys.modules)  # (imported before any job: the worker's own)
        self.module_count = len(sys.modules)

    def broken_fds(self) -> List[int]:
        """The runner's own descriptors that a job closed or replaced."""
        return [fd for fd, identity in self.own.items() if _identity(fd) != identity]


def run_one(root: str, job: Dict[str, Any], baseline: _Baseline) -> Tuple[Dict[str, Any], List[int]]:
    """Run one job in this process; return the answer for the worker (``retire``: why
    the runner cannot serve another job), and the runner's own descriptors the job closed
    or replaced."""
    os.environ["HITHER_FS_JOB_ID"] = job["job_id"]  # (before the snapshot: put back as it is)
    saved = _Saved()
    measured = _reset_peak_memory()
    cpu0, children_peak0 = _usage()
    started_ns = time.time_ns()
    for entry in [e for e in sys.path_importer_cache if not e.startswith("/")]:
        del sys.path_importer_cache[entry]  # relative entries ('' above all) follow the job's chdir
    redirect_console(job["console"])  # (emptied by the worker before it sent the job)
    unfit = []
    try:
        outcome = attempt_outcome(root, job["job_id"], spec=job["spec"])
    finally:
        unfit += [saved.restore(), baseline.process.restore()]
        broken = baseline.broken_fds()
        if any(fd in broken for fd in baseline.console_fds):
            unfit.append("the job closed or replaced the runner's console")  # fds 1 and 2 stay the job's
        else:
            _console_back(baseline.console_fds)
    cpu, children_peak = _usage()
    answer: Dict[str, Any] = {"outcome": outcome, "cpu_seconds": round(cpu - cpu0, 6)}
    memory = _memory_kib()
    if measured and "VmHWM" in memory:
        peak = memory["VmHWM"]
        if children_peak > children_peak0:  # a child process of the job used more than that
            peak = max(peak, children_peak)
        answer["peak_memory_bytes"] = peak * 1024
    rss = memory.get("VmRSS")
    answer["rss_kib"] = rss
    fds = _open_fds()
    if baseline.rss_kib is None:
        baseline.rss_kib, baseline.fds = rss, fds
    threads = _threads() - baseline.threads
    unfit += [
        "the job left {} thread(s) running".format(threads) if threads > 0 else None,
        "the job left processes running" if _children_left() else None,
        "the job left {} MiB more in use".format((rss - baseline.rss_kib) // 1024)
        if rss is not None and baseline.rss_kib is not None and (rss - baseline.rss_kib) * 1024 > RETIRE_ABOVE_BYTES
        else None,
        "the job left {} more files open".format(fds - baseline.fds)
        if fds is not None and baseline.fds is not None and fds - baseline.fds > RETIRE_ABOVE_FDS else None,
    ]
    why = next((u for u in unfit if u), None)
    if why:
        answer["retire"] = why
    if len(sys.modules) != baseline.module_count:  # the job imported modules: their files, once
        new = [name for name in list(sys.modules) if name not in baseline.modules]
        baseline.modules.update(new)
        baseline.module_count = len(sys.modules)
        answer["code_files"] = code_files(new, started_ns)
    return answer, broken


def _threads() -> int:
    """Threads running here, not counting hither_fs's own daemon threads (a job that waits
    for another job starts the one that watches the root: it serves the next jobs too)."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("hither_fs-"))


def serve(root: str, jobs_fd: int, answers_fd: int, notify: Optional[Callable[[], None]] = None) -> None:
    """Run the jobs read from ``jobs_fd`` (one JSON object per line:
    ``{"job_id", "console", "spec"}``: ``console`` is the directory for its
    console files) until it closes, answering each on ``answers_fd`` with its
    outcome and measures; ``notify`` is called after each answer (it wakes the worker).
    Returns when the pipe closes or after a job that leaves the runner unfit."""
    me = os.getpid()
    baseline = _Baseline([jobs_fd, answers_fd], (os.dup(1), os.dup(2)))
    with os.fdopen(jobs_fd, "rb", buffering=1 << 16) as jobs:
        for line in jobs:
            job = json.loads(line)
            answer, broken = run_one(root, job, baseline)
            if os.getpid() != me:  # a process the job forked, come back here: it answers nothing
                os._exit(0)
            answer["job_id"] = job["job_id"]
            if jobs_fd in broken or answers_fd in broken:
                # the job closed (or reused) the pipes: whatever has the numbers now is not the
                # worker. The answer is left where the worker looks when a runner ends unanswered.
                write_json(os.path.join(job["console"], OUTCOME), answer)
                os._exit(1)
            data = (json.dumps(answer) + "\n").encode()
            while data:
                data = data[os.write(answers_fd, data):]
            if notify is not None:
                notify()
            if answer.get("retire"):
                return
