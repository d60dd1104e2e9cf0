"""``Job``: a handle on one job in a root.

A ``Job`` holds nothing but an id and a root, so any process can make one
(``hi.get_job(id)``) and see the same job: its status, result, error, console
output and runtime facts all come from the job's directory.
"""

import logging
import os
import stat
import threading
import time
from concurrent import futures
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, Callable, Dict, Generic, Optional, TypeVar

from . import dirwatch, progress, protocol, summary
from .errors import JobError, JobNotFinishedError, job_error
from .protocol import FINAL_VALUES, Status
from .root import Root
from .runtime.files import CorruptFileError, listdir, read_text_tail
from .runtime.layout import live_console_prefix
from .runtime.serialization import decode
from .watch import Waiters, help_in_process, run_callbacks, watcher

log = logging.getLogger("hither_fs.job")

#: Poll intervals while waiting: a look at first after ``POLL_MIN``, then after a tenth
#: of the time waited so far (a job that ends is noticed within about a tenth of the
#: time it took: a millisecond for a 10 ms job), up to 10 ms, and over the first minute
#: of a long wait up to 50 ms (see :func:`poll_interval`). Each look is one open of
#: state.json (an open, not a stat: a shared filesystem may answer a stat from a cache
#: that is seconds old, but revalidates a file it opens).
POLL_MIN, POLL_MAX, POLL_MAX_LONG, POLL_SHARE = 0.0005, 0.01, 0.05, 0.1
#: A root on a filesystem of this machine: a waiter is woken by inotify the moment a job's
#: state changes (:mod:`hither_fs.dirwatch`), and looks without an event only this often.
POLL_WATCHED = 0.1
#: The longest interval of a wait that allows some lag (``hi.wait()`` while jobs remain).
POLL_LAG_MAX = 0.5
#: A waiter promotes the pending job it waits for itself once it has waited this long.
PROMOTE_AFTER = 1.0
#: How often the waiter lets its handler look after its workers (start local
#: workers, scale Slurm allocations).
HELP_INTERVAL = 0.2


def poll_interval(waited: float, first: float = POLL_MIN, lag: float = 0.0, watched: bool = False) -> float:
    """Seconds until the next look at a job's state, ``waited`` seconds into a wait.

    ``first`` at first, then a tenth of the time waited (``POLL_SHARE``), capped at
    ``POLL_MAX``, a cap that rises over a minute of waiting to ``POLL_MAX_LONG``; with
    ``lag``, at least that share of the time waited (at most ``POLL_LAG_MAX``).
    ``watched``: inotify wakes the wait when the state changes, so looks without an
    event are only a safety net, ``POLL_WATCHED`` apart (or as the lag allows)."""
    cap = min(POLL_MAX_LONG, POLL_MAX + waited / 1500.0)
    interval = max(min(cap, max(first, POLL_SHARE * waited)), min(POLL_LAG_MAX, lag * waited))
    return max(interval, POLL_WATCHED) if watched else interval


T = TypeVar("T")
#: Guards the lazy creation of a job's ``Future`` parts (most jobs never need them).
_FUTURE_LOCK = threading.Lock()


class Job(futures.Future, Generic[T]):
    """A job: a hither function applied to specific arguments.

    A ``Job`` is a ``concurrent.futures.Future``: ``done()``, ``result(timeout)``,
    ``exception(timeout)``, ``add_done_callback()``, ``cancel()``, and the
    standard library's ``concurrent.futures.wait`` and ``as_completed`` take jobs.
    Its outcome is written to the root by whatever process runs it; a job that is
    waited on that way, or has callbacks, is watched by one thread of this process
    (:mod:`hither_fs.watch`), which also runs the callbacks. Unlike a thread pool's
    future, ``cancel()`` also stops a running job (its worker kills it).
    """

    def __init__(self, job_id: str, root: Optional[Root] = None, handler: Any = None):
        self.root = root if isinstance(root, Root) else Root.get(root)
        self.root.layout.job_dir(job_id)  # validates the id
        self.id = job_id
        self._handler = handler
        self._spec: Optional[Dict[str, Any]] = None
        self._final: Optional[Dict[str, Any]] = None  # the final state, once seen (it never changes)
        self._dir_checked = False
        self._help_error = ""  # what the handler last failed with while we waited (said once)

    # -- facts ---------------------------------------------------------------

    @property
    def spec(self) -> Dict[str, Any]:
        if self._spec is None:
            self._spec = protocol.read_spec(self.root, self.id)
        return self._spec

    @property
    def function_name(self) -> str:
        try:
            return self.spec["function"]["name"]
        except (CorruptFileError, KeyError, TypeError):
            return "?"  # the damaged spec is reported by the job's error

    @property
    def directory(self) -> str:
        """The job's directory in the root (``spec.json``, ``state.json``, ...)."""
        return self.root.layout.job_dir(self.id)

    def _read_state(self) -> Dict[str, Any]:
        if self._final is not None:
            return self._final
        if not self._dir_checked:  # once: never read a job's files through a symbolic link
            protocol.check_job_dir(self.root, self.id)
            self._dir_checked = True
        try:
            state = protocol.read_state(self.root, self.id)
        except FileNotFoundError:
            raise FileNotFoundError("job {} is not in root {} (any more: removed by hither-fs gc, or by hand)".format(
                self.id, self.root.path)) from None
        if state.get("status") in FINAL_VALUES:
            self._final = state
        return state

    def get_state(self) -> Dict[str, Any]:
        """The job's state record; a queued job that a worker has claimed shows as running."""
        return protocol.live_status(self.root, self.id, self._read_state())

    @property
    def status(self) -> str:
        """``pending``, ``queued``, ``running``, ``finished``, ``error`` or ``cancelled``."""
        return self.get_state()["status"]

    def is_done(self) -> bool:
        return self._read_state().get("status") in FINAL_VALUES

    def get_runtime_info(self) -> Dict[str, Any]:
        """Host, pid, start and end, wall and CPU seconds, peak memory (empty until run)."""
        return dict(self._read_state().get("runtime") or {})

    def get_console_output(self) -> Dict[str, str]:
        """``{'stdout': ..., 'stderr': ...}``: final output, or the live output of a running job."""
        state = self.get_state()
        out = {}
        for name in ("stdout", "stderr"):
            if state["status"] in FINAL_VALUES:
                size = (state.get("console") or {}).get(name)
                out[name] = self._final_console(name, state) if size else ""
            elif state["status"] == Status.RUNNING:
                prefix = live_console_prefix(name, state.get("gen", 0), state.get("attempt", 1))
                live = sorted(n for n in listdir(self.directory) if n.startswith(prefix))
                out[name] = read_text_tail(os.path.join(self.directory, live[-1])) if live else ""
            else:
                out[name] = ""
        return out

    def _final_console(self, name: str, state: Dict[str, Any]) -> str:
        """The console output of an ended job that wrote some: ``<name>.txt`` - or, in the
        moment its worker renames it there after publishing the final state (a waiter can
        be that quick), its live file, read unless the rename took it away meanwhile."""
        path = os.path.join(self.directory, name + ".txt")
        prefix = live_console_prefix(name, state.get("gen", 0), state.get("attempt", 1))
        for _ in range(3):
            if os.path.lexists(path):
                break
            live = [os.path.join(self.directory, n) for n in listdir(self.directory) if n.startswith(prefix)]
            if live:
                text = read_text_tail(live[0])
                if text or os.path.lexists(live[0]):
                    return text
        return read_text_tail(path)

    # -- outcome ---------------------------------------------------------------

    def get_result(self) -> T:
        """The result of a finished job; the job's error if it failed."""
        state = self._read_state()
        status = state.get("status")
        if status == Status.FINISHED:
            return decode(state["result"]["value"], self.root.store)
        if status in FINAL_VALUES:
            raise self._error(state)
        raise JobNotFinishedError("job {} ({}) is {}".format(self.id, self.function_name, self.status))

    def _error(self, state: Dict[str, Any]) -> Exception:
        record = state.get("error") if isinstance(state.get("error"), dict) else {
            "type": "JobError", "message": protocol.summary(state) or "no error record"}
        return job_error(self.id, self.function_name, record)

    def wait(self, timeout: Optional[float] = None) -> T:
        """Wait until the job is done; return its result or raise its error.

        ``timeout`` (seconds) raises ``TimeoutError`` if it expires first; the
        job itself goes on. A wait longer than a second shows a progress line on a
        terminal or in Jupyter; the first Ctrl-C cancels this process's unfinished
        jobs (see :mod:`hither_fs.progress`).
        """
        with progress.watching([self], leave=False):
            self.wait_done(timeout)
        return self.get_result()

    def wait_done(self, timeout: Optional[float] = None, poll: float = POLL_MIN, lag: float = 0.0) -> str:
        """Wait until the job reaches a final status and return it (never raises the job's error).

        ``poll`` is the first interval between looks (they grow from there). ``lag``:
        the share of the time waited so far that may pass before the end is noticed
        (for a wait whose end nobody needs to the millisecond: fewer looks). On a root
        of this machine the wait is woken at once by the change (inotify) instead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        next_help = 0.0
        started = time.monotonic()
        changed: Optional[threading.Event] = None
        subscription = None
        try:
            while True:
                if changed is not None:
                    changed.clear()  # before the look: a change after it wakes the wait below
                status = self._read_state().get("status")
                if status in FINAL_VALUES:
                    return status
                now = time.monotonic()
                look_again = False
                if changed is None:  # watched from now on where inotify serves (then looked at once more)
                    changed = threading.Event()
                    if dirwatch.is_local(self.root.path):
                        subscription = dirwatch.subscribe(self.directory, changed.set)
                        look_again = subscription is not None
                if now >= next_help:
                    # in-process jobs run here; a local or Slurm handler starts or scales its workers
                    if self._handler is not None:
                        try:
                            self._handler.help(self.root)
                            help_in_process(self.root, besides=self._handler)
                        except Exception as exc:  # e.g. sbatch refusing: its jobs fail, say why once
                            if str(exc) != self._help_error:
                                self._help_error = str(exc)
                                log.warning("while waiting for job %s: %s", self.id, exc)
                    if status == Status.PENDING and now - started > PROMOTE_AFTER:
                        # its upstream jobs' workers promote it when they finish, unless it started
                        # waiting after they were claimed: then the one waiting for it does
                        try:
                            protocol.promote(self.root, self.id)
                        except Exception as exc:
                            log.debug("could not promote job %s: %s", self.id, exc)
                    next_help = now + HELP_INTERVAL
                    look_again = True
                if look_again:
                    continue
                if deadline is not None and now >= deadline:
                    raise TimeoutError("job {} ({}) did not finish within {} s (status: {})".format(
                        self.id, self.function_name, timeout, self.status))
                pause = poll_interval(now - started, poll, lag, watched=subscription is not None)
                pause = min(pause, max(0.0, next_help - now))
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - now))
                if subscription is not None:
                    changed.wait(pause)
                else:
                    time.sleep(pause)
        finally:
            dirwatch.unsubscribe(subscription)

    def cancel(self) -> bool:
        """Cancel the job: a queued or pending job never runs, a running one is killed.

        Returns True if it is cancelled, or its worker was asked to kill it; False if it
        had already finished or failed - or if another process held it the whole time
        (say, a stopped worker whose lease has not yet run out): then try again later.
        """
        status = protocol.cancel(self.root, self.id)
        if status not in FINAL_VALUES and status != Status.RUNNING:
            log.warning("job %s could not be cancelled now: another process holds it (it is %s); try again",
                        self.id, status)
        return status in (Status.CANCELLED, Status.RUNNING)

    # -- the concurrent.futures.Future contract -----------------------------------

    def __getattr__(self, name: str) -> Any:
        # a Future's parts (its state, waiters, callbacks) are made when first used: most
        # jobs never need them, and a process may hold a hundred thousand jobs
        if name in ("_state", "_result", "_exception", "_waiters", "_done_callbacks", "_future_condition"):
            self._make_future_parts()
            return self.__dict__[name]
        raise AttributeError("{!r} object has no attribute {!r}".format(type(self).__name__, name))

    def _make_future_parts(self) -> None:
        with _FUTURE_LOCK:
            if "_future_condition" not in self.__dict__:
                self.__dict__.update(_state=PENDING, _result=None, _exception=None, _waiters=Waiters(self),
                                     _done_callbacks=[], _future_condition=threading.Condition())

    @property
    def _condition(self) -> threading.Condition:
        """The Future's condition. ``concurrent.futures.wait`` and ``as_completed`` take it
        first: the job is completed then if it has ended, so they see it done at once.
        Never raises (the standard library holds other futures' conditions as it asks)."""
        try:
            self._settle()
        except Exception as exc:  # a read that failed for now: the watcher tries again
            log.debug("job %s: %s", self.id, exc)
        return self.__dict__["_future_condition"]

    def _settle(self) -> bool:
        """Complete this Future if the job has ended: notify its waiters and hand its callbacks
        to the callback thread. True once it is complete. A job removed from the root, or
        whose records are damaged, completes with that error; other read errors (the
        filesystem failing for now) raise, and the job stays as it is."""
        if "_future_condition" not in self.__dict__:
            self._make_future_parts()
        if self._state in (FINISHED, CANCELLED_AND_NOTIFIED):
            return True
        try:
            state = self._read_state()
            status = state.get("status")
            if status not in FINAL_VALUES:
                return False
            error = None if status in (Status.FINISHED, Status.CANCELLED) else self._error(state)
        except (FileNotFoundError, protocol.JobDirectoryError, CorruptFileError) as exc:
            status, error = Status.ERROR.value, exc
        condition = self.__dict__["_future_condition"]
        with condition:
            if self._state in (FINISHED, CANCELLED_AND_NOTIFIED):
                return True
            if status == Status.CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
            else:
                self._state, self._exception = FINISHED, error
                for waiter in self._waiters:
                    (waiter.add_result if error is None else waiter.add_exception)(self)
            condition.notify_all()
            callbacks, self._done_callbacks = list(self._done_callbacks), []
        if callbacks:
            run_callbacks(self, callbacks)
        return True

    def _waited_on(self) -> bool:
        """Whether ``concurrent.futures.wait``/``as_completed`` or a callback still waits for it."""
        with self.__dict__["_future_condition"]:
            return bool(self._waiters) or bool(self._done_callbacks)

    def done(self) -> bool:
        """True once the job has ended: finished, failed or cancelled."""
        return self._settle()

    def running(self) -> bool:
        return not self._settle() and self.status == Status.RUNNING

    def cancelled(self) -> bool:
        return self._settle() and self._state == CANCELLED_AND_NOTIFIED

    def _wait_as_future(self, timeout: Optional[float]) -> None:
        """Wait until the job has ended; ``concurrent.futures.TimeoutError`` if it does not in time."""
        if self._settle():
            return
        try:
            self.wait_done(timeout)
        except TimeoutError as exc:  # the wait's own: the job did not end in time
            if isinstance(exc, futures.TimeoutError):
                raise
            raise futures.TimeoutError(str(exc)) from None
        except (FileNotFoundError, protocol.JobDirectoryError, CorruptFileError):
            pass  # removed or damaged while waited for: settled with that error below
        self._settle()

    def result(self, timeout: Optional[float] = None) -> T:
        """``wait(timeout)``, with the Future's exceptions: ``concurrent.futures.TimeoutError``
        when the time runs out, a ``CancelledError`` (``hi.JobCancelledError``) for a cancelled
        job, and the job's own error, as ``wait()`` raises it, for a failed one."""
        self._wait_as_future(timeout)
        if self._exception is not None and not isinstance(self._exception, JobError):
            raise self._exception  # removed or damaged: the reason, not a retry of the read
        return self.get_result()

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The job's error, or None if it finished; waits up to ``timeout`` seconds for it to end.
        Raises ``CancelledError`` (``hi.JobCancelledError``) for a cancelled job."""
        self._wait_as_future(timeout)
        if self._state == CANCELLED_AND_NOTIFIED:
            raise self._error(self._read_state())
        return self._exception

    def add_done_callback(self, fn: Callable[["Job[T]"], Any]) -> None:
        """Call ``fn(job)`` once the job has ended: now, here, if it has; else from this
        process's callback thread (:mod:`hither_fs.watch`). An exception ``fn`` raises is
        logged, as for any Future."""
        try:
            ended = self._settle()
        except OSError as exc:
            log.debug("job %s: %s", self.id, exc)
            ended = False
        if not ended:
            with self.__dict__["_future_condition"]:
                if self._state not in (FINISHED, CANCELLED_AND_NOTIFIED):
                    self._done_callbacks.append(fn)
                    watcher.watch(self)
                    return
        try:
            fn(self)
        except Exception:
            log.exception("a done-callback of job %s raised", self.id)

    # -- hither's spellings -----------------------------------------------------

    def get_status(self) -> Status:
        """hither's status, a ``hi.JobStatus``: ``QUEUED`` (also while the job waits for upstream
        jobs), ``RUNNING``, ``FINISHED`` or ``ERROR`` - also for a cancelled job, as in hither,
        whose ``get_exception()`` is then a ``hi.JobCancelledException``. ``job.status`` has
        hither_fs's six: ``pending`` and ``cancelled`` too."""
        status = Status(self.status)
        return {Status.PENDING: Status.QUEUED, Status.CANCELLED: Status.ERROR}.get(status, status)

    def get_exception(self) -> Exception:
        """The exception of a job that failed or was cancelled - what ``wait()`` raises.
        Raises ``JobNotFinishedError`` before it ends, and ``ValueError`` for a job that finished."""
        state = self._read_state()
        if state.get("status") == Status.FINISHED:
            raise ValueError("job {} ({}) finished without an error: it has no exception".format(
                self.id, self.function_name))
        if state.get("status") not in FINAL_VALUES:
            raise JobNotFinishedError("job {} ({}) is {}".format(self.id, self.function_name, self.status))
        return self._error(state)

    def print_console_out(self) -> None:
        """Print the console output (stdout, then stderr) of a job that has ended; nothing before
        (as in hither). ``get_console_output()`` returns it, live while the job runs."""
        if not self.is_done():
            return
        for text in self.get_console_output().values():
            if text:
                print(text, end="" if text.endswith("\n") else "\n")

    def set_label(self, label: str) -> "Job":
        """Give the job a label (also after it was submitted); returns the job, as in hither.

        Kept in the root as ``label.json`` in the job's directory, so ``get_label()`` in any
        process sees it. (``hi.Config(label=...)`` labels jobs as they are submitted.)"""
        if not isinstance(label, str) or not label.strip() or len(label) > 200:
            raise ValueError("label must be a non-empty string of at most 200 characters, not {!r}".format(label))
        path = self.directory
        for part in (os.path.dirname(path), path):  # never write through a link out of the root
            try:
                st = os.lstat(part)
            except FileNotFoundError:
                raise FileNotFoundError("job {} is not in root {} (any more: removed by hither-fs gc, or by "
                                        "hand)".format(self.id, self.root.path)) from None
            if not stat.S_ISDIR(st.st_mode):
                raise protocol.JobDirectoryError(path, "is not a job directory ({} is {})".format(
                    part, "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"))
        summary.write_label(self.root, self.id, label)  # (so that the listing's summaries see the change)
        return self

    def get_label(self) -> str:
        """The label given by ``set_label()``, else by ``hi.Config(label=...)``, else - as in
        hither - the function's name."""
        return protocol.read_label(self.root, self.id) or self.spec.get("label") or self.function_name

    def get_job_id(self) -> str:
        """hither's spelling of ``job.id``."""
        return self.id

    def get_function_name(self) -> str:
        """hither's spelling of ``job.function_name``."""
        return self.function_name

    def get_function_version(self) -> str:
        """The version of the function, as submitted."""
        return self.spec["function"]["version"]

    def __repr__(self):
        try:
            status = self.status
        except Exception:  # a damaged or removed job still has a repr
            status = "?"
        try:
            name = self.function_name
        except Exception:
            name = "?"
        return "<Job {} {} ({})>".format(self.id, name, status)

    def __eq__(self, other):
        return isinstance(other, Job) and other.id == self.id and other.root.path == self.root.path

    def __hash__(self):
        return hash((self.id, self.root.path))


def get_job(job_id: str, root: Optional[str] = None) -> Job:
    """Re-attach to a job by id, from any process that sees the root."""
    job = Job(job_id, Root.get(root))
    if not protocol.job_exists(job.root, job_id):
        raise LookupError("no job {} in root {}".format(job_id, job.root.path))
    return job
