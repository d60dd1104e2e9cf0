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
high-water mark, reset before it starts). What a job changes is put back
after it: the environment, the working directory, the umask, ``sys.path``,
``sys.stdout``/``sys.stderr``. What cannot be put back ends the runner once
the job's answer is sent, so the next job gets a fresh one: threads or
processes the job left running, and memory it left in use,
``RETIRE_ABOVE_BYTES`` above what the runner had after its first job. A
process the job forks that comes back into the runner's loop leaves at once. A job that kills its process (a crash, ``os._exit``)
or is killed (a timeout, a cancel) ends the runner with it; the worker sees
the runner gone and fails that job as it would a forked one.

Standard library only (and what :mod:`.execute` imports): the runner is forked
from the worker, but nothing here needs more.
"""

import json
import os
import resource
import sys
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from .execute import attempt_outcome, redirect_console

#: A runner whose resident memory grew this much above what it had after its first job
#: (objects a job left behind, a heap that does not shrink) retires after the job.
RETIRE_ABOVE_BYTES = 512 << 20


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


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    are its own, and what the runner itself has to say goes where the worker's does."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.dup2(saved_fds[0], 1)
    os.dup2(saved_fds[1], 2)


class _Saved:
    """What a job may change in its process and the runner puts back after it."""

    def __init__(self):
        self.environ = _environ_copy()
        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.umask = os.umask(0o077)
        os.umask(self.umask)

    def restore(self) -> None:
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


def run_one(root: str, job: Dict[str, Any], threads_before: int, rss_start: Optional[int],
            console_fds: Tuple[int, int]) -> Dict[str, Any]:
    """Run one job in this process; return the answer for the worker. ``threads_before``
    and ``rss_start`` (KiB, None at first) are what the runner had before; ``console_fds``:
    copies of the runner's own stdout and stderr, put back after the job."""
    os.environ["HITHER_FS_JOB_ID"] = job["job_id"]  # (before the snapshot: put back as it is)
    saved = _Saved()
    measured = _reset_peak_memory()
    cpu0 = _cpu_seconds()
    for entry in [e for e in sys.path_importer_cache if not e.startswith("/")]:
        del sys.path_importer_cache[entry]  # relative entries ('' above all) follow the job's chdir
    redirect_console(job["console"])  # (emptied by the worker before it sent the job)
    try:
        outcome = attempt_outcome(root, job["job_id"], spec=job["spec"])
    finally:
        saved.restore()
        _console_back(console_fds)
    answer: Dict[str, Any] = {"outcome": outcome, "cpu_seconds": round(_cpu_seconds() - cpu0, 6)}
    memory = _memory_kib()
    if measured and "VmHWM" in memory:
        answer["peak_memory_bytes"] = memory["VmHWM"] * 1024
    rss = memory.get("VmRSS")
    answer["rss_kib"] = rss
    threads = _threads() - threads_before
    if threads > 0:
        answer["retire"] = "the job left {} thread(s) running".format(threads)
    elif _children_left():
        answer["retire"] = "the job left processes running"
    elif rss is not None and rss_start is not None and (rss - rss_start) * 1024 > RETIRE_ABOVE_BYTES:
        answer["retire"] = "the job left {} MiB more in use".format((rss - rss_start) // 1024)
    return answer


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
    threads_before = _threads()
    rss_start = None  # what it has in use after its first job (the imports a job needs)
    console_fds = (os.dup(1), os.dup(2))
    with os.fdopen(jobs_fd, "rb", buffering=1 << 16) as jobs:
        for line in jobs:
            job = json.loads(line)
            answer = run_one(root, job, threads_before, rss_start, console_fds)
            if os.getpid() != me:  # a process the job forked, come back here: it answers nothing
                os._exit(0)
            if rss_start is None:
                rss_start = answer.get("rss_kib")
            answer["job_id"] = job["job_id"]
            data = (json.dumps(answer) + "\n").encode()
            while data:
                data = data[os.write(answers_fd, data):]
            if notify is not None:
                notify()
            if answer.get("retire"):
                return
