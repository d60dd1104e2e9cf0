"""What a wait shows and what Ctrl-C in it does: the live progress line of ``hi.wait()`` and
``job.wait()``, drawn by ``tqdm``.

Once a wait has lasted :data:`DELAY` seconds, a daemon thread counts the
waited jobs by status and redraws one line - on the terminal (stderr), or as
tqdm's widget in Jupyter (its text form without ``ipywidgets``)::

    hither_fs:  62%|######2   | 5/8 jobs [00:03<00:01, 5 finished, 0 failed, 2 running, 1 queued]

with, while jobs are queued, what the scheduler says of their queue
(``allocation 1234 pending: Resources``). The estimate is tqdm's, from the
jobs ended since the line appeared over the time waited. The line is drawn
only on a terminal or in Jupyter, unless ``hi.Config(progress=True)`` asks
for it anyway (``False``: never).

Counting is kept cheap: a job's final state is read once and kept by the
``Job``; an unfinished job costs one open of its ``state.json`` per count,
plus one listing of ``running/`` per root (a claimed job is running), and
counts are made at most every :data:`REFRESH` seconds - less often when
counting takes long (many jobs): never more than 1/:data:`COST_SHARE` of
the time. Why a queue waits (the handler's ``scheduler.json``, the workers'
heartbeats) is looked up at most every :data:`REASONS_EVERY` seconds.

:func:`watching` wraps a wait: it shows the line, and turns the first Ctrl-C
into cancelling this process's unfinished jobs
(:func:`hither_fs.submit.interrupted`) before the ``KeyboardInterrupt`` goes on.
"""

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import protocol
from .config import Config
from .protocol import Status

log = logging.getLogger("hither_fs.progress")

#: A wait shorter than this (seconds) shows nothing.
DELAY = 1.0
#: Counts are refreshed at most this often (seconds)...
REFRESH = 1.0
#: ...and counting takes at most 1/COST_SHARE of the time (with many unfinished jobs, less often).
COST_SHARE = 20
#: Why queued jobs wait is looked up at most this often (seconds).
REASONS_EVERY = 5.0
#: How long stopping the line waits for a count in progress to end (seconds).
JOIN_TIMEOUT = 0.5

#: The line's width on a terminal that reports none.
FALLBACK_WIDTH = 100

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} jobs [{elapsed}<{remaining}{postfix}]"

_local = threading.local()  # .depth: waits nested in this thread (an in-process job that waits)
_showing_lock = threading.Lock()
_showing = [False]  # a line is on screen in this process: a wait in another thread draws none


def where_shown(setting: Optional[bool]) -> Optional[str]:
    """Where a wait's line goes: ``"jupyter"``, ``"stream"`` (stderr) or None (nowhere), for
    ``hi.Config(progress=setting)``: None draws it on a terminal or in Jupyter only."""
    if setting is False:
        return None
    if in_jupyter():
        return "jupyter"
    if setting:
        return "stream"
    try:
        return "stream" if sys.stderr is not None and sys.stderr.isatty() else None
    except (AttributeError, ValueError, OSError):  # no isatty (a replaced stream), or closed
        return None


def in_jupyter() -> bool:
    """Whether this process is a Jupyter kernel (IPython in a terminal is not)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:
        return False


def _bar_class(where: str) -> Any:
    """tqdm's notebook widget in Jupyter when ``ipywidgets`` is there, else its text line
    (which Jupyter shows in the cell's output as well)."""
    if where == "jupyter":
        try:
            import ipywidgets  # type: ignore  # noqa: F401  (tqdm.notebook needs it, and only warns without)
            from tqdm.notebook import tqdm as notebook_tqdm  # type: ignore
            return notebook_tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm  # type: ignore
    return tqdm


def _width() -> Optional[int]:
    """None: tqdm follows the terminal's size; a width when stderr is a terminal that reports
    none (a pseudo-terminal nobody sized: tqdm would cut the line to nothing)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        return None if size.columns > 0 and size.lines > 0 else size.columns or FALLBACK_WIDTH
    except (AttributeError, ValueError, OSError):  # not a terminal (Jupyter, a file): tqdm does not cut
        return None


def describe(counts: Dict[str, int]) -> str:
    """``5 finished, 0 failed, 2 running, 1 queued`` (cancelled and waiting-for-upstream jobs
    only when there are some)."""
    parts = ["{} finished".format(counts.get(Status.FINISHED.value, 0)),
             "{} failed".format(counts.get(Status.ERROR.value, 0))]
    if counts.get(Status.CANCELLED.value):
        parts.append("{} cancelled".format(counts[Status.CANCELLED.value]))
    parts += ["{} running".format(counts.get(Status.RUNNING.value, 0)),
              "{} queued".format(counts.get(Status.QUEUED.value, 0))]
    if counts.get(Status.PENDING.value):
        parts.append("{} waiting for upstream jobs".format(counts[Status.PENDING.value]))
    return ", ".join(parts)


class Line:
    """The progress line of one wait (see the module docstring); :meth:`stop` ends it."""

    def __init__(self, jobs: Sequence[Any], where: str, leave: bool = True):
        unique: Dict[Tuple[str, str], Any] = {}
        for job in jobs:
            unique.setdefault((job.root.path, job.id), job)
        self.jobs: List[Any] = list(unique.values())
        self.where = where
        self.leave = leave
        self.started = time.time()  # tqdm's clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._bar: Any = None
        self._reason = ""
        self._next_reasons = 0.0
        self._history: Dict[str, int] = {}  # job id -> runs of it that ended unfinished (lost workers)
        self._thread = threading.Thread(target=self._run, name="hither_fs-progress", daemon=True)
        self._thread.start()

    # -- counting --------------------------------------------------------------------

    def count(self) -> Tuple[Dict[str, int], Dict[str, Tuple[Any, set]]]:
        """The jobs by status, and the queues that hold queued ones (by root)."""
        counts: Dict[str, int] = {}
        queued: Dict[str, Tuple[Any, set]] = {}
        claimed: Dict[str, set] = {}
        for job in self.jobs:
            try:
                state = job._read_state()  # a final state is kept by the job: read once
            except Exception:  # removed or damaged: job.get_result() says why
                state = {"status": Status.ERROR.value}
            status = state.get("status")
            if status == Status.QUEUED:
                ids = claimed.get(job.root.path)
                if ids is None:
                    try:
                        ids = {token.job_id for token, _ in protocol.running_claims(job.root)}
                    except OSError:
                        ids = set()
                    claimed[job.root.path] = ids
                if job.id in ids:
                    status = Status.RUNNING.value
                else:
                    queued.setdefault(job.root.path, (job.root, set()))[1].add(state.get("queue"))
            elif status not in protocol.FINAL_VALUES and status != Status.PENDING:
                status = Status.QUEUED.value
            counts[str(status)] = counts.get(str(status), 0) + 1
            self._note_rerun(job, state)
        return counts, queued

    def _note_rerun(self, job: Any, state: Dict[str, Any]) -> None:
        """Log, once, that a job runs again because its worker was lost."""
        history = state.get("history")
        if not isinstance(history, list) or len(history) <= self._history.get(job.id, 0):
            return
        self._history[job.id] = len(history)
        last = history[-1] if isinstance(history[-1], dict) else {}
        if state.get("status") not in protocol.FINAL_VALUES:
            log.info("job %s (%s) runs again: %s", job.id, job.function_name,
                     last.get("why") or "its worker {} was lost".format(last.get("worker", "?")))

    def reasons(self, queued: Dict[str, Tuple[Any, set]]) -> str:
        """Why the queued jobs wait (what the scheduler says), looked up every few seconds."""
        now = time.monotonic()
        if now < self._next_reasons:
            return self._reason
        self._next_reasons = now + REASONS_EVERY
        from .slurm import QueueWaits  # slurm imports job, which imports this module
        said: List[str] = []
        for root, queues in queued.values():
            try:
                waits = QueueWaits(root)
                said += [waits.reason(q) for q in sorted(queues, key=str)]
            except Exception as exc:
                log.debug("why queues wait: %s", exc)
        self._reason = "; ".join(r for r in dict.fromkeys(said) if r)
        return self._reason

    # -- drawing ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._stop.wait(DELAY):
                return
            while True:
                started = time.monotonic()
                counts, queued = self.count()
                reason = self.reasons(queued) if queued else ""
                took = time.monotonic() - started
                with self._lock:
                    if self._closed:
                        return
                    self._draw(counts, reason)
                if self._stop.wait(max(REFRESH, COST_SHARE * took)):
                    return
        except Exception as exc:  # the line must never break a wait
            log.debug("progress line stopped: %s", exc, exc_info=True)

    def _draw(self, counts: Dict[str, int], reason: str) -> None:
        done = sum(counts.get(s.value, 0) for s in (Status.FINISHED, Status.ERROR, Status.CANCELLED))
        text = describe(counts) + ("; " + reason if reason else "")
        if self._bar is None:
            # tqdm's delay keeps it from drawing before the update below; its clock starts with
            # the wait, and its estimate counts the jobs that end from now on
            width = _width()
            self._bar = _bar_class(self.where)(
                total=len(self.jobs), initial=done, desc="hither_fs", unit="job", leave=self.leave,
                file=sys.stderr, dynamic_ncols=width is None, ncols=width, nrows=width and 24, mininterval=0, miniters=0,
                smoothing=0, bar_format=BAR_FORMAT, postfix=text, delay=DELAY)
            self._bar.start_t = self.started
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.update(done - self._bar.n)  # draws (miniters=0 and mininterval=0: always)

    def stop(self, final: bool = True) -> None:
        """End the line: ``final`` draws the counts once more (the wait is over) before
        leaving it on screen; otherwise (Ctrl-C) it stays as last drawn."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(JOIN_TIMEOUT)  # a count of many jobs may be under way: not longer
        with self._lock:
            self._closed = True
            if self._bar is None:
                return
            try:
                if final:
                    counts, _ = self.count()
                    self._draw(counts, "")
                self._bar.close()
            except Exception as exc:
                log.debug("closing the progress line: %s", exc)


def start_line(jobs: Sequence[Any], leave: bool = True) -> Optional[Line]:
    """A progress line for a wait for ``jobs``, if ``hi.Config(progress=...)`` and the place
    (terminal, Jupyter) call for one and no other wait of this process shows one."""
    where = where_shown(Config.current()["progress"])
    if where is None or all(getattr(job, "_final", None) is not None for job in jobs):
        return None  # nowhere to draw, or every job known to be over: nothing to wait for
    with _showing_lock:
        if _showing[0]:
            return None
        _showing[0] = True
    try:
        return Line(jobs, where, leave)
    except Exception:
        _showing[0] = False
        raise


def _stop_line(line: Line, final: bool) -> None:
    try:
        line.stop(final)
    finally:
        _showing[0] = False


@contextlib.contextmanager
def watching(jobs: Sequence[Any], leave: bool = True) -> Iterator[None]:
    """Around a wait for ``jobs``: the progress line (``leave``: it stays on screen once the
    wait is over), and the first Ctrl-C cancelling this process's unfinished jobs (see
    :func:`hither_fs.submit.interrupted`). Only the outermost wait of a thread does either
    (an in-process job may wait for jobs of its own)."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    line: Optional[Line] = None
    try:
        if depth == 0:
            line = start_line(jobs, leave)
        try:
            yield
        except KeyboardInterrupt:
            if depth == 0:
                if line is not None:
                    stopping, line = line, None
                    _stop_line(stopping, final=False)
                from .submit import interrupted  # submit imports job, which imports this module
                interrupted()
            raise
        finally:
            if line is not None:
                _stop_line(line, final=True)
    finally:
        _local.depth = depth
